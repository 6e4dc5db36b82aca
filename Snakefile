# The same DAG as dvc.yaml, for Snakemake (local cores/GPUs or a cluster profile).
# Rules are derived from the resolved DVC stages: see workflow/rules/dvc_stages.smk.
include: "workflow/rules/dvc_stages.smk"


rule all:
    default_target: True
    input:
        PRODUCED,
