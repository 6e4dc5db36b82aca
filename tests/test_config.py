import subprocess
import sys

import pytest
import yaml
from pydantic import BaseModel

from mascot.config import load_params, parse_params
from mascot.datasets import dataset_config_class
from mascot.errors import ConfigError

from .conftest import REPO, tiny_params_dict


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.datasets == ["synthetic"]
    assert params.dataset("synthetic").videos.test > 0
    assert set(params.variants) <= set(params.variant_defs)


def _error_for(mutate) -> str:
    raw = tiny_params_dict()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


def test_unknown_key_is_named_with_allowed_keys():
    msg = _error_for(lambda r: r["train"].update({"lrr": 0.1}))
    assert "unknown key `train.lrr`" in msg
    assert "lr" in msg and "epochs" in msg


def test_invalid_value_names_key_and_expectation():
    msg = _error_for(lambda r: r["train"].update({"lr": -1}))
    assert "`train.lr`" in msg and "greater than 0" in msg


def test_wrong_type_names_key():
    msg = _error_for(lambda r: r["frames"].update({"num_frames": "many"}))
    assert "`frames.num_frames`" in msg and "'many'" in msg


def test_dataset_section_validated_by_registry():
    msg = _error_for(lambda r: r["data"]["synthetic"].update({"colours": 3}))
    assert "data.synthetic.colours" in msg


def test_unknown_dataset_and_variant():
    assert "registered datasets" in _error_for(lambda r: r["data"].update({"nope": {}}))
    assert "variant_defs" in _error_for(lambda r: r.update({"variants": ["meanP", "ghost"]}))


def test_datasets_must_have_a_section():
    msg = _error_for(lambda r: r.update({"datasets": ["synthetic", "other"]}))
    assert "['other'] have no section under `data:`" in msg


def test_cli_reports_schema_error_without_traceback(tmp_path):
    raw = tiny_params_dict()
    raw["frames"]["max_failed_fraction"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mascot",
            "--params",
            str(params),
            "tables",
            "--dataset",
            "synthetic",
            "--metrics",
            "m",
            "--out",
            "o",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "frames.max_failed_fraction" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_variant_overrides_are_validated_against_mascot_settings():
    raw = tiny_params_dict()
    raw["variant_defs"]["random_masks"]["mask"] = {"score": "randm", "ration": 0.3}
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "`variant_defs.random_masks.mask.score`" in str(err.value) and "`variant_defs.random_masks.mask.ration`" in str(
        err.value
    )
    raw = tiny_params_dict()
    raw["variant_defs"]["meanP"]["isc"] = {"weight": 0.0}
    with pytest.raises(ConfigError, match="variant_defs.meanP.*objective: mascot"):
        parse_params(raw)


def test_variants_inherit_the_shared_mascot_settings():
    raw = tiny_params_dict()
    raw["mascot"]["mask"]["ratio"] = 0.3
    params = parse_params(raw)
    assert params.variant("mascot").mask.ratio == 0.3
    assert params.variant("random_masks").mask.ratio == 0.3 and params.variant("random_masks").mask.score == "random"
    assert params.variant("mascot_ratio25").mask.ratio == 0.25  # its own key wins
    assert params.variant("meanP").mask is None


def test_ablation_variants_are_defined_and_disjoint_from_the_default_runs():
    raw = tiny_params_dict()
    raw["ablation"]["variants"] = ["mascot"]
    with pytest.raises(ConfigError, match=r"\['mascot'\] are in both `variants` and `ablation.variants`"):
        parse_params(raw)
    raw["ablation"]["variants"] = ["nonexistent"]
    with pytest.raises(ConfigError, match=r"ablation.variants \['nonexistent'\] are not defined"):
        parse_params(raw)


def test_every_masked_variant_of_the_repository_runs_at_k_equal_l():
    """The default trains every masked variant (default and ablation runs) with the whole tower."""
    from mascot.clip_model import check_split

    params = load_params(REPO / "params.yaml")
    masked = params.masked_variants()
    assert masked and check_split(params.clip.model, params.train.trainable_blocks, masked) == params.train.trainable_blocks


def test_sweeps_and_ablation_rows_change_one_thing():
    """A sweep row differs from MASCOT only in its swept key; an ablation row adds one component
    (one of the mask / isc / dual sections) to the row above it."""
    params = load_params(REPO / "params.yaml")
    mascot = params.variant("mascot").model_dump(exclude={"label"})

    def diff(a: dict, b: dict, prefix: str = "") -> set[str]:
        keys = set(a) | set(b)
        out = set()
        for k in keys:
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out |= diff(a[k], b[k], f"{prefix}{k}.")
            elif a.get(k) != b.get(k):
                out.add(f"{prefix}{k}")
        return out

    for table, key in (("mask_ratio", "mask.ratio"), ("mask_score", "mask.score")):
        rows = [v for v in params.ablation.tables[table] if v not in ("meanP", "mascot")]
        assert rows
        for name in rows:
            assert diff(params.variant(name).model_dump(exclude={"label"}), mascot) == {key}, (table, name)
    rows = params.ablation.tables["ablation"]
    masked = [params.variant(v).model_dump(exclude={"label"}) for v in rows[1:]]
    assert params.variant(rows[0]).mask is None and rows[-1] == "mascot"
    for before, after in zip(masked, masked[1:], strict=False):
        assert len({k.split(".")[0] for k in diff(before, after)}) == 1


def default_mismatches(raw: dict, section: BaseModel, default: BaseModel | None, where: str) -> list[str]:
    """Keys of `raw` (a params.yaml mapping validated as `section`) whose value differs from the schema's
    default; `default` is the section's own default instance (None: use each field's default)."""
    found = []
    for key, value in raw.items():
        field, current = type(section).model_fields[key], getattr(section, key)
        own = (
            getattr(default, key)
            if default is not None
            else (None if field.is_required() else field.get_default(call_default_factory=True))
        )
        if isinstance(current, BaseModel) and isinstance(value, dict):
            found += default_mismatches(value, current, own, f"{where}{key}.")
        elif own is not None or not field.is_required():
            if current != own:
                found.append(f"{where}{key}: params.yaml {current!r}, schema default {own!r}")
    return found


def params_default_mismatches(raw: dict) -> list[str]:
    params = parse_params(raw)
    found = default_mismatches({k: v for k, v in raw.items() if k != "data"}, params, None, "")
    for name, section in raw["data"].items():
        entry = dataset_config_class(name)
        found += default_mismatches(section or {}, params.dataset(name), entry.model_validate({}), f"data.{name}.")
    return found


def test_schema_defaults_equal_params_yaml():
    """One set of defaults (see config.py): a key deleted from params.yaml falls back to the same value."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mismatches = params_default_mismatches(raw)
    assert not mismatches, "schema defaults (config.py, the dataset entries) differ from params.yaml:\n  " + "\n  ".join(
        mismatches
    )


def test_a_default_that_differs_from_params_yaml_is_found():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["epochs"] += 1
    raw["mascot"]["mask"]["ratio"] = 0.3
    raw["data"]["synthetic"]["videos"]["val"] += 1
    found = params_default_mismatches(raw)
    assert [line.split(":")[0] for line in found] == ["train.epochs", "mascot.mask.ratio", "data.synthetic.videos.val"]


def unstated_keys(raw: dict, model: type[BaseModel], where: str = "") -> list[str]:
    """Settings of the schema that a params mapping leaves to their default (nested sections walked)."""
    missing = []
    for key, field in model.model_fields.items():
        if key not in raw:
            missing.append(f"{where}{key}")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and isinstance(raw[key], dict):
            missing += unstated_keys(raw[key], field.annotation, f"{where}{key}.")
    return missing


def test_params_yaml_states_every_setting():
    """Outside `data:` (whose sections list what one sets; the entries' file registries stay defaults),
    every key of the schema is written in params.yaml, so the file shows every value that applies."""
    from mascot.config import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert unstated_keys(raw, Params) == []
    del raw["train"]["grad_clip"], raw["mascot"]["isc"]["heads"]
    assert unstated_keys(raw, Params) == ["train.grad_clip", "mascot.isc.heads"]


def test_masked_ablation_variants_count_for_the_features_cache():
    """K is one setting for the features cache: a masked ablation row needs K = L even when `variants`
    has only base models, and the features stage (check_split over masked_variants) says so first."""
    from mascot.clip_model import check_split

    raw = tiny_params_dict()
    raw["variants"], raw["ablation"]["variants"], raw["train"]["trainable_blocks"] = ["meanP"], ["isc_both"], 2
    raw["figures"]["masked"] = "meanP"  # no masked variant among `variants`
    params = parse_params(raw)
    assert params.masked_variants() == {"ablation.variants": ["isc_both"]}
    with pytest.raises(ConfigError) as error:
        check_split(params.clip.model, params.train.trainable_blocks, params.masked_variants())
    # the message names the key that lists the variant, and only that one
    assert str(error.value).startswith("`ablation.variants` lists `isc_both`, which mask patches")
    assert "`train.trainable_blocks: 4`" in str(error.value) and "`variants`" not in str(error.value)
    assert "remove the masked variants from `ablation.variants`" in str(error.value)


def test_masked_variants_are_named_with_the_key_that_lists_them():
    from mascot.clip_model import check_split

    raw = tiny_params_dict()
    raw["variants"], raw["ablation"]["variants"], raw["train"]["trainable_blocks"] = ["meanP", "mascot"], ["isc_both"], 2
    params = parse_params(raw)
    assert params.masked_variants() == {"variants": ["mascot"], "ablation.variants": ["isc_both"]}
    with pytest.raises(ConfigError, match=r"^`variants` lists `mascot` and `ablation.variants` lists `isc_both`, which mask"):
        check_split(params.clip.model, params.train.trainable_blocks, params.masked_variants())
