"""The one schema for `params.yaml`.

Every stage loads its parameters through `load_params`, so an invalid or unknown key is reported
once, the same way, before any work starts. Per-dataset sections (`data.<name>`) are validated by the
config class that the dataset's registry entry declares, so a new dataset brings its own schema
without touching this file.

One source of defaults. The schema keeps a default for every setting, and
`tests/test_config.py::test_schema_defaults_equal_params_yaml` proves that each default equals the
value params.yaml states (here and in the dataset entries), so deleting a key from params.yaml
changes nothing. We chose that over a schema that requires every key because defaults carry
weight in their own right: the real datasets' file registries (URLs, checksums, archive layouts)
are defaults that params.yaml overrides one key at a time, and writing them all out would bury
the settings people edit; sections are built from one changed key in code and tests
(`MaskConfig(score="random")`); and a key added later keeps older params files valid. A new key
needs its default here and its value in params.yaml: `test_params_yaml_states_every_setting`
fails while params.yaml lacks it (outside the dataset sections), and the first test holds the two
values equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClipConfig(Section):
    model: str = Field(
        "mascot-tiny",
        description="open_clip model name (built-in such as ViT-B-32, or one of src/mascot/model_configs)",
    )
    pretrained: str | None = Field(
        "models/pretrain/clip.pt",
        description="open_clip pretrained tag (needs the network once), a local checkpoint file, or null for random "
        "weights; the embedded default's is the pretrain stage's checkpoint (src/mascot/pretrain.py)",
    )
    weights_activation: Literal["quick_gelu", "gelu"] | None = Field(
        "gelu",
        description="the activation a state-dict file in `pretrained` was trained with (quick_gelu: OpenAI's CLIP); "
        "required for such a file, checked against the model config (tags and TorchScript archives say it themselves)",
    )
    cache_dir: str | None = Field(None, description="where pretrained weights are cached (default: $HF_HOME)")
    init_seed: int = Field(
        0,
        description="seed of the random weights when pretrained is null (the features and train stages must build the same model)",
    )


class FramesConfig(Section):
    num_frames: int = Field(6, ge=1, description="frames sampled uniformly over [start, end] of each video")
    shard_size: int = Field(512, ge=1, description="videos per memory-mappable shard (the unit of work and of resumption)")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        2,
        description="parallel decoding processes (one shard each); auto: one per available core (at most one per "
        "shard); a number above the available cores is capped at them",
    )
    decoder: Literal["auto", "decord", "pyav"] = Field(
        "auto",
        description="auto: per video, decord (seeking) where the keyframe index says seeking decodes fewer frames, "
        "else sequential PyAV; decord: always decord first; pyav: sequential PyAV only. Every route gives the same "
        "frames, and PyAV takes over where decord fails (docs/benchmarks.md, 'Frame extraction')",
    )
    max_failed_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="fail the stage when more than this fraction of videos is unreadable"
    )
    format: Literal["raw", "jpeg", "webp"] = Field(
        "jpeg",
        description="how frames are stored: JPEG or WebP image files, decoded where batches are assembled (loader "
        "threads, or the main thread with loader_workers: 0), or raw uint8 (no decoding); bytes, decode rates and "
        "the default's metrics with JPEG in docs/benchmarks.md, 'Frame formats'",
    )
    quality: int = Field(95, ge=1, le=100, description="JPEG / WebP quality of compressed frames (raw ignores it)")


class PretrainConfig(Section):
    """The embedded default's image–caption pretraining of its tiny CLIP (src/mascot/pretrain.py)."""

    images: int = Field(12800, ge=2, description="generated still images (one caption each) in the pretraining pool")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=2, description="image-caption pairs per step (in-batch negatives)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    seed: int = Field(0, description="draws the images and their order (the weights start from clip.init_seed)")
    eval_renders: int = Field(3, ge=1, description="held-out images per colour × shape × size, for zero-shot R@k")


class ComputeConfig(Section):
    """Where a stage computes (features, train, evaluate: one selection, devices.py)."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else the CPU")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="autocast precision on CUDA (fp16 adds loss scaling in train); the CPU computes in fp32"
    )
    loader_workers: int = Field(
        0,
        ge=0,
        description="threads that read and assemble the batches ahead of the compute (src/mascot/loader.py); 0: in the "
        "stage's own process. Same batches, same results for any value",
    )
    decode_on: Literal["loader", "device"] = Field(
        "loader",
        description="where JPEG frames are decoded: loader (Pillow, where batches are assembled, overlapping the "
        "compute with loader_workers > 0), or device (torchvision's decode_jpeg on the stage's device, one call per "
        "batch, per chunk with gradient caching: nvJPEG on CUDA, in the stage's own thread; on the CPU the same pixels "
        "as Pillow; JPEG only; not measured on a GPU yet, hence not the default). Raw frames and cached tokens need no "
        "decoding",
    )


class FeaturesConfig(ComputeConfig):
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "fp32", description="autocast precision on CUDA; fp32 by default: the cache is stored in fp16, finer than bf16"
    )
    max_words: int = Field(32, ge=3, le=77, description="caption length in tokens (incl. start/end tokens)")
    batch_size: int = Field(64, ge=1, description="frames encoded per forward pass")


class TrainConfig(ComputeConfig):
    trainable_blocks: int = Field(
        4,
        ge=1,
        description="K: top vision blocks trained (below L on cached tokens, at L from the frames); masked variants need "
        "K = L (docs/model.md, section 'Exact masking')",
    )
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=2, description="video-caption pairs per step (in-batch negatives)")
    lr: float = Field(5e-4, gt=0, description="learning rate of the new modules")
    clip_lr_scale: float = Field(1.0, gt=0, description="CLIP weights train at lr * clip_lr_scale (1e-7 / 1e-4 in CLIP4Clip)")
    weight_decay: float = Field(0.2, ge=0)
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.98), description="AdamW betas; (0.9, 0.98) as CLIP4Clip's BertAdam (torch's default is (0.9, 0.999))"
    )
    adam_eps: float = Field(1e-6, gt=0, description="AdamW epsilon; 1e-6 as CLIP4Clip's BertAdam (torch's default 1e-8)")
    no_decay: Literal["ndim", "clip4clip"] = Field(
        "ndim",
        description="parameters without weight decay: ndim (ours: every trained tensor of fewer than 2 dims: biases, "
        "LayerNorm weights, logit_scale, the ISC mask token) or clip4clip (names containing bias / LayerNorm.bias / "
        "LayerNorm.weight, CLIP4Clip's list; with open_clip's names that is the biases only)",
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    logit_scale_max: float = Field(100.0, gt=0)
    selection_metric: Literal["t2v_R1", "rsum"] = Field(
        "rsum", description="validation metric that picks the checkpoint (rsum = sum of R@1/5/10 both ways)"
    )
    grad_checkpointing: bool = Field(
        False,
        description="recompute the transformer blocks' activations in the backward pass instead of storing them: "
        "the same gradients, one more forward pass of every block, a fraction of the activation memory (README, 'Training at paper scale')",
    )
    grad_cache_chunk: int = Field(
        0,
        ge=0,
        description="gradient caching: encode this many pairs at a time, so that memory no longer grows with "
        "train.batch_size (the same loss and gradients up to rounding; one process only); 0: the whole batch at once",
    )
    checkpoint_every: int = Field(
        0, ge=0, description="also save the resumable training state every this many steps (0: at epoch ends only)"
    )
    processes: int = Field(
        1,
        ge=1,
        description="data-parallel training processes (one GPU each) that the train stage starts itself under torchrun; "
        "each takes batch_size / processes pairs of every global batch, the loss is over the global batch (distributed.py)",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="smoke runs of a full-size dataset only (benchmarks/rehearsal.py): at most this many steps an epoch, "
        "from the epoch's shuffled order (the lr schedule then spans epochs × max_steps); null: every batch",
    )

    @model_validator(mode="after")
    def _processes_split_the_batch(self) -> TrainConfig:
        if self.processes > 1 and self.grad_cache_chunk:
            raise ValueError(
                f"grad_cache_chunk ({self.grad_cache_chunk}) works in one process, but processes is {self.processes}: set "
                "grad_cache_chunk to 0 (each process then holds only its share of the batch) or processes to 1"
            )
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of processes ({self.processes})")
        return self

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"both betas must lie in [0, 1), got {list(value)}")
        return value


class MaskConfig(Section):
    """Attention-based masking (docs/model.md, section "What is the paper's and what is ours": the defaults are ours)."""

    ratio: float = Field(0.5, gt=0, lt=1, description="fraction of each frame's patches under each mask (ceil(ratio * N))")
    score: Literal["cls_attn", "text_sim", "random"] = Field(
        "cls_attn",
        description="patch score: last-block CLS attention, cosine with the caption feature, or random (ablation)",
    )


class IscConfig(Section):
    """Informed Semantics Completion (docs/model.md, section "One training step of MASCOT", step 5)."""

    weight: float = Field(1.0, ge=0, description="lambda_isc; 0 switches reconstruction off")
    views: Literal["high", "both"] = Field(
        "high", description="masked views reconstructed: high only (emphasis shift, paper) or both (ablation)"
    )
    layers: int = Field(2, ge=1, description="decoder blocks")
    heads: int = Field(8, ge=1, description="decoder attention heads (must divide the vision width)")


class DualConfig(Section):
    """Dual-mask co-learning (docs/model.md, section "One training step of MASCOT", step 4)."""

    weight: float = Field(0.5, ge=0, description="lambda_dual: weight of the masked views' InfoNCE (mean of both)")
    kl_weight: float = Field(0.5, ge=0, description="lambda_kl: weight of the KL between the views' similarity distributions")
    anchor: Literal["full", "none"] = Field(
        "full", description="full: both views are also pulled to the stop-gradient distribution of the unmasked view"
    )


class MascotConfig(Section):
    """MASCOT's settings, shared by every variant with `objective: mascot` (which may override keys)."""

    mask: MaskConfig = MaskConfig()
    isc: IscConfig = IscConfig()
    dual: DualConfig = DualConfig()


class _Temporal(Section):
    temporal: Literal["meanP", "seqTransf"] = Field(description="temporal module of the base model (docs/model.md)")
    temporal_layers: int = Field(4, ge=1, description="transformer layers of seqTransf")
    label: str | None = Field(None, description="row label in the tables (default: the variant name)")


class VariantSpec(_Temporal):
    """A variant as written under `variant_defs:`; `Params.variant` resolves it."""

    objective: Literal["base", "mascot"] = Field(
        "base", description="base: the CLIP4Clip model alone; mascot: MASCOT's training (docs/model.md)"
    )
    mask: dict[str, Any] = Field(default_factory=dict, description="keys of `mascot.mask` this variant changes")
    isc: dict[str, Any] = Field(default_factory=dict, description="keys of `mascot.isc` this variant changes")
    dual: dict[str, Any] = Field(default_factory=dict, description="keys of `mascot.dual` this variant changes")

    @model_validator(mode="after")
    def _overrides_need_mascot(self) -> VariantSpec:
        if self.objective == "base" and (self.mask or self.isc or self.dual):
            raise ValueError("mask/isc/dual overrides only apply to `objective: mascot`")
        return self


class VariantConfig(_Temporal):
    """A resolved variant: what training uses and checkpoints record. `mask: None` is the base model."""

    mask: MaskConfig | None = None
    isc: IscConfig = IscConfig()
    dual: DualConfig = DualConfig()


def resolve_variant(spec: VariantSpec, mascot: MascotConfig) -> VariantConfig:
    """The variant's own keys over the shared `mascot:` settings (raises pydantic's ValidationError)."""
    temporal = spec.model_dump(include={"temporal", "temporal_layers", "label"})
    if spec.objective == "base":
        return VariantConfig(**temporal)
    merged = {name: {**getattr(mascot, name).model_dump(), **getattr(spec, name)} for name in ("mask", "isc", "dual")}
    return VariantConfig.model_validate({**temporal, **merged})


class EvaluateConfig(ComputeConfig):
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "fp32", description="autocast precision on CUDA (also of the train stage's validation); fp32 by default: cheap"
    )
    batch_size: int = Field(256, ge=1, description="videos / captions embedded per forward pass")
    chunk_size: int = Field(1024, ge=1, description="captions per chunk of the similarity matrix (memory: chunk x videos)")
    dsl_scale: float = Field(
        100.0, gt=0, description="inverse temperature of the DSL (dual softmax) post-processing, reported apart"
    )
    max_videos: int | None = Field(
        None,
        ge=1,
        description="smoke runs of a full-size dataset only (benchmarks/rehearsal.py): evaluate the first N videos of a "
        "split and their captions (val in train, test in evaluate and figures); the metrics then cover those videos only "
        "(num_videos in the metrics file) and are not the protocol's; null: every video",
    )


class AblationConfig(Section):
    """The ablation rows (and any sweep rows added to them): trained by the `*_ablation` stages
    (`make ablation`), not by `make repro`; `tables` are written from them and the default runs."""

    variants: list[str] = Field(min_length=1, description="names from variant_defs trained by the ablation stages")
    tables: dict[str, list[str]] = Field(description="table name → rows, over `variants` + `ablation.variants`")


class FiguresConfig(Section):
    """What the figures stage draws (src/mascot/figures.py)."""

    baseline: str = Field("meanP", description="variant whose retrievals are shown beside the masked one's (in `variants`)")
    masked: str = Field(
        "mascot", description="masked variant whose masks and retrievals are shown (in `variants`; a base one: no masks)"
    )
    seed: int = Field(0, description="the runs' seed (in `seeds`)")
    videos: int = Field(4, ge=1, description="validation videos in the mask grid (the first of the split)")
    queries: int = Field(4, ge=1, description="test captions whose retrievals are shown (the first test videos' first captions)")
    top_k: int = Field(5, ge=1, description="retrieved videos shown per query")


class Params(Section):
    datasets: list[str] = Field(min_length=1, description="datasets the pipeline runs over")
    variants: list[str] = Field(min_length=1, description="names from variant_defs that are trained")
    seeds: list[int] = Field(min_length=1, description="training seeds; tables show mean ± std over them")
    data: dict[str, dict | None] = Field(description="per-dataset settings, validated by the dataset registry")
    clip: ClipConfig
    pretrain: PretrainConfig = PretrainConfig()
    frames: FramesConfig
    features: FeaturesConfig
    train: TrainConfig
    mascot: MascotConfig
    variant_defs: dict[str, VariantSpec]
    tables: dict[str, list[str]] = Field(
        description="table name → variants shown as its rows (main, ablation, sweeps), written per dataset"
    )
    evaluate: EvaluateConfig
    ablation: AblationConfig
    figures: FiguresConfig

    @field_validator("datasets", "variants", "seeds")
    @classmethod
    def _unique(cls, value: list) -> list:
        dupes = sorted({str(v) for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(f"entries must be unique, repeated: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Params:
        missing = [d for d in self.datasets if d not in self.data]
        if missing:
            raise ValueError(f"datasets {missing} have no section under `data:`; add `data: {{{missing[0]}: {{}}}}`")
        unknown = [v for v in self.variants if v not in self.variant_defs]
        if unknown:
            raise ValueError(f"variants {unknown} are not defined under `variant_defs:` ({sorted(self.variant_defs)})")
        for name, spec in self.variant_defs.items():
            try:
                resolve_variant(spec, self.mascot)
            except ValidationError as exc:
                problems = "; ".join(f"`variant_defs.{name}.{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
                raise ValueError(problems) from None
        unknown = [v for v in self.ablation.variants if v not in self.variant_defs]
        if unknown:
            raise ValueError(f"ablation.variants {unknown} are not defined under `variant_defs:` ({sorted(self.variant_defs)})")
        both = sorted(set(self.variants) & set(self.ablation.variants))
        if both:
            raise ValueError(f"{both} are in both `variants` and `ablation.variants`; each run belongs to one of them")
        for prefix, tables in (("tables", self.tables), ("ablation.tables", self.ablation.tables)):
            for table, rows in tables.items():
                unknown = [v for v in rows if v not in self.variant_defs]
                if unknown:
                    raise ValueError(f"{prefix}.{table} lists {unknown}, which are not defined under `variant_defs:`")
        fig = self.figures
        for key in ("baseline", "masked"):
            if getattr(fig, key) not in self.variants:
                raise ValueError(
                    f"figures.{key} `{getattr(fig, key)}` is not in `variants` {self.variants}, whose runs the figures stage "
                    f"draws: set figures.{key} to one of them (figures.masked: a masked one to see its masks; a base one "
                    "draws none)"
                )
        if fig.seed not in self.seeds:
            raise ValueError(f"figures.seed {fig.seed} is not in `seeds` {self.seeds}")
        return self

    def dataset(self, name: str):
        """The validated `data.<name>` section."""
        if name not in self.data:
            raise ConfigError(f"params.yaml has no `data.{name}` section; known: {sorted(self.data)}.")
        return self.data[name]

    def masked_variants(self) -> dict[str, list[str]]:
        """The variants trained on this features cache that mask patches, by the key that lists them
        (`variants`, `ablation.variants`; keys without any left out): they need K = L, and
        clip_model.check_split's error names the key to edit."""
        listed = {"variants": self.variants, "ablation.variants": self.ablation.variants}
        masked = {key: [name for name in names if self.variant(name).mask is not None] for key, names in listed.items()}
        return {key: names for key, names in masked.items() if names}

    def variant(self, name: str) -> VariantConfig:
        """The variant with MASCOT's shared settings applied."""
        if name not in self.variant_defs:
            raise ConfigError(
                f"Variant `{name}` is not defined under `variant_defs:` in params.yaml (defined: {sorted(self.variant_defs)})."
            )
        return resolve_variant(self.variant_defs[name], self.mascot)


def _model_at(loc: tuple, root: type[BaseModel] = None) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (to list the keys allowed there)."""
    model: Any = root or Params
    for part in (loc[2:] if root else loc)[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
        if getattr(model, "__origin__", None) is dict:
            model = model.__args__[1]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict, source: str, root: type[BaseModel] | None = None) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc, root)
        allowed = f" Allowed keys here: {', '.join(owner.model_fields)}." if owner else ""
        return f"{source}: unknown key `{key}`.{allowed} Remove it or fix its spelling."
    if error["type"] == "missing":
        return f"{source}: required key `{key}` is missing."
    if error["type"] == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return f"{source}: {message}." if not loc else f"{source}: key `{key}`: {message}."
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{source}: key `{key}`: {error['msg']}{got_text}."


def _dataset_sections(raw: dict, source: str) -> tuple[dict, list[str]]:
    """Validate each `data.<name>` with the config class of its registry entry."""
    from .datasets import available, dataset_config_class

    sections, problems = {}, []
    data = raw.get("data")
    if not isinstance(data, dict):
        return sections, problems  # reported by the main schema
    for name, section in data.items():
        if name not in available():
            problems.append(f"{source}: key `data.{name}`: no such dataset; registered datasets are {available()}.")
            continue
        try:
            sections[name] = dataset_config_class(name).model_validate(section or {})
        except ValidationError as exc:
            for e in exc.errors():
                problems.append(_describe({**e, "loc": ("data", name, *e["loc"])}, source, dataset_config_class(name)))
    return sections, problems


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already loaded params mapping; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}.")
    sections, problems = _dataset_sections(raw, source)
    params = None
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e, source) for e in exc.errors()] + problems
    if problems:
        raise ConfigError(
            "Invalid parameters:\n  " + "\n  ".join(problems) + "\nSee the documented defaults in params.yaml and README.md."
        )
    return params.model_copy(update={"data": sections})


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Load and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found; run from the repository root or pass --params.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    return parse_params(raw, source=str(path))
