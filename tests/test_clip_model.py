import open_clip
import pytest
import torch

from mascot.clip_model import (
    PatchEmbedding,
    TextEncoder,
    VisionPrefix,
    VisionTop,
    check_split,
    create_clip,
    image_size,
    normalization,
    tokenizer,
    tokens_per_frame,
)
from mascot.config import ClipConfig
from mascot.errors import ConfigError


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip(ClipConfig(model="mascot-tiny", pretrained=None))


def uint8_frames(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def preprocessed(clip, frames: torch.Tensor) -> torch.Tensor:
    """open_clip's input for uint8 frames: (n, 3, S, S) scaled to [0, 1] and normalized."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(clip))
    return (frames.permute(0, 3, 1, 2).float() / 255 - mean) / std


@pytest.mark.parametrize("k", [1, 2, 4])
def test_split_tower_equals_encode_image(clip, k):
    frames = uint8_frames(3)
    with torch.no_grad():
        ours = VisionTop(clip.visual, k)(VisionPrefix(clip.visual, k)(frames))
        ref = clip.encode_image(preprocessed(clip, frames))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_patch_embedding_is_open_clips_embeds(clip):
    """PatchEmbedding repeats open_clip's `_embeds` over the same modules: the same tokens, bit for bit."""
    frames = uint8_frames(2, seed=1)
    with torch.no_grad():
        ours = PatchEmbedding(clip.visual, *normalization(clip))(frames)
        ref = clip.visual._embeds(preprocessed(clip, frames))
    assert torch.equal(ours, ref)


def test_prefix_token_shape(clip):
    tokens = VisionPrefix(clip.visual, 2)(uint8_frames(2))
    assert tokens.shape == (2, 1 + (64 // 16) ** 2, 128) == (2, *tokens_per_frame("mascot-tiny"))


def test_prefix_is_frozen(clip):
    prefix = VisionPrefix(clip.visual, 2)
    assert not any(p.requires_grad for p in prefix.parameters())


def test_short_context_text_equals_encode_text(clip):
    captions = ["a red circle moving to the left", "x"]
    short = tokenizer("mascot-tiny", 16)(captions)
    full = open_clip.get_tokenizer("mascot-tiny")(captions)
    with torch.no_grad():
        torch.testing.assert_close(TextEncoder(clip)(short), clip.encode_text(full), atol=1e-5, rtol=1e-5)


def test_registry_and_checks():
    assert image_size("mascot-tiny") == 64 and image_size("ViT-B-32") == 224
    assert check_split("ViT-B-16", 12) == 12
    with pytest.raises(ConfigError, match="between 1 and the 4"):
        check_split("mascot-tiny", 5)
    with pytest.raises(ConfigError, match="not an open_clip model"):
        image_size("ViT-Nonexistent")
    with pytest.raises(ConfigError, match="exceeds the text context"):
        tokenizer("mascot-tiny", 100)


def test_drop_tokens_keeps_cls_then_the_kept_patches_in_order():
    from mascot.clip_model import drop_tokens

    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # CLS + 4 patches
    out = drop_tokens(tokens, torch.tensor([[3, 0], [1, 2]]))
    assert torch.equal(out, torch.stack([tokens[0, [0, 4, 1]], tokens[1, [0, 2, 3]]]))


def test_normalization_is_open_clips_openai_mean_and_std_by_default(clip):
    from types import SimpleNamespace

    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from mascot.clip_model import normalization

    expected = (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))
    assert normalization(clip) == expected
    assert normalization(SimpleNamespace(visual=SimpleNamespace())) == expected  # a tower that records none


def test_objective_and_check_split_give_one_k_equal_l_message():
    from mascot.clip_model import masking_needs_whole_tower
    from mascot.config import load_params
    from mascot.model import RetrievalModel
    from mascot.objective import Objective

    from .conftest import REPO

    variant = load_params(REPO / "params.yaml").variant("mascot")
    with pytest.raises(ConfigError) as error:
        Objective(RetrievalModel(create_clip(ClipConfig(pretrained=None)), 2, variant, 2), variant)
    assert str(error.value) == masking_needs_whole_tower(2, 4)
    assert str(error.value).startswith("This variant masks patches (`objective: mascot`), but `train.trainable_blocks: 2`")
    with pytest.raises(ConfigError, match=r"^`train --variant` lists `mascot`, which mask patches.* of mascot-tiny\."):
        check_split("mascot-tiny", 2, {"train --variant": ["mascot"], "variants": []})


def test_local_checkpoint_is_loaded(tmp_path, clip):
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    loaded = create_clip(ClipConfig(model="mascot-tiny", pretrained=str(path), weights_activation="gelu"))
    torch.testing.assert_close(loaded.visual.proj, clip.visual.proj)


def test_a_state_dict_file_must_say_its_activation(tmp_path, clip):
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    with pytest.raises(ConfigError, match="state-dict file, which does not record the activation.*clip.weights_activation"):
        create_clip(ClipConfig(model="mascot-tiny", pretrained=str(path), weights_activation=None))
    with pytest.raises(ConfigError, match=r"trained with QuickGELU.*quick_gelu.: true"):  # no -quickgelu sibling config
        create_clip(ClipConfig(model="mascot-tiny", pretrained=str(path), weights_activation="quick_gelu"))


def test_unavailable_pretrained_tag_is_a_clear_error():
    from mascot.errors import MascotError

    with pytest.raises(MascotError, match="clip.pretrained"):
        create_clip(ClipConfig(model="mascot-tiny", pretrained="/nonexistent/weights.pt"))


# --- pretrained weights run in the architecture they were trained in -------------------------------


def _preset_models() -> dict[str, str]:
    import yaml

    from .conftest import REPO

    return {
        name: spec["clip.model"]
        for name, spec in yaml.safe_load((REPO / "presets/presets.yaml").read_text())["backbones"].items()
    }


@pytest.fixture(scope="module")
def vit_b_32_quickgelu():
    return create_clip(ClipConfig(model=_preset_models()["vit-b-32"], pretrained=None))


@pytest.mark.parametrize("backbone", ["vit-b-32", "vit-b-16"])
def test_every_preset_backbone_builds_the_activation_of_openai_weights(backbone, monkeypatch):
    from open_clip.transformer import QuickGELU

    from mascot import presets
    from mascot.clip_model import check_activation

    from .conftest import REPO

    monkeypatch.chdir(REPO)
    composed = [presets.overrides(name) for name in presets.names() if name.endswith(backbone)]
    assert len(composed) == 4 and all(o["clip.pretrained"] == "openai" for o in composed)
    for o in composed:  # every preset's own pair: the registry's tag and the config agree
        check_activation(ClipConfig(model=o["clip.model"], pretrained=o["clip.pretrained"]))
    model = create_clip(ClipConfig(model=composed[0]["clip.model"], pretrained=None))
    for tower in (model.visual.transformer, model.transformer):
        assert all(isinstance(block.mlp.gelu, QuickGELU) for block in tower.resblocks)


@pytest.mark.parametrize("model", ["ViT-B-32", "ViT-B-16"])
def test_openai_weights_in_a_gelu_tower_are_a_config_error(model):
    with pytest.raises(ConfigError, match=rf"trained with QuickGELU.*`clip.model: {model}-quickgelu`"):
        create_clip(ClipConfig(model=model, pretrained="openai"))


def test_a_tag_is_looked_up_under_the_model_then_under_its_sibling_config():
    from mascot.clip_model import pretrained_tag

    assert pretrained_tag("ViT-B-32-quickgelu", "openai")[0] == "ViT-B-32-quickgelu"
    name, entry = pretrained_tag("ViT-B-32-quickgelu", "laion2b_s34b_b79k")  # listed for the GELU config only
    assert name == "ViT-B-32" and entry and not entry.get("quick_gelu", False)
    assert pretrained_tag("mascot-tiny", "openai") == ("", {})


def test_gelu_tag_in_a_quickgelu_tower_is_a_config_error():
    with pytest.raises(ConfigError, match=r"trained with GELU.*`clip.model: ViT-B-32`"):
        create_clip(ClipConfig(model="ViT-B-32-quickgelu", pretrained="laion2b_s34b_b79k"))


def _assert_every_tensor_equal(model, state: dict) -> None:
    ours = model.state_dict()
    assert set(state) <= set(ours)
    for key, value in state.items():
        assert torch.equal(ours[key], value.to(ours[key].dtype)), key


def test_open_clip_state_dict_file_loads_into_the_preset_model(tmp_path, vit_b_32_quickgelu):
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in vit_b_32_quickgelu.state_dict().items()}
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"trained with QuickGELU.*`clip.model: ViT-B-32-quickgelu`"):
        create_clip(ClipConfig(model="ViT-B-32", pretrained=str(path), weights_activation="quick_gelu"))
    loaded = create_clip(ClipConfig(model=_preset_models()["vit-b-32"], pretrained=str(path), weights_activation="quick_gelu"))
    _assert_every_tensor_equal(loaded, state)


class _Holder(torch.nn.Module):
    """A TorchScript-able tree of parameters with OpenAI's CLIP names (the format of OpenAI's .pt)."""

    def __init__(self, state: dict):
        super().__init__()
        children: dict[str, dict] = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if rest:
                children.setdefault(head, {})[rest] = value
            else:
                self.register_parameter(key, torch.nn.Parameter(value, requires_grad=False))
        for name, sub in children.items():
            self.add_module(name, _Holder(sub))

    @classmethod
    def openai_archive(cls, state: dict) -> "_Holder":
        """OpenAI's archives also hold three integer entries that open_clip drops on loading."""
        holder = cls(state)
        for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
            holder.register_buffer(name, torch.tensor(value))
        return holder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_openai_torchscript_archive_loads_into_the_preset_model(tmp_path, vit_b_32_quickgelu):
    from mascot.clip_model import is_torchscript_archive

    torch.manual_seed(2)
    # OpenAI ships fp16 weights; open_clip's CLIP uses OpenAI's parameter names.
    state = {k: torch.randn_like(v).half() for k, v in vit_b_32_quickgelu.state_dict().items() if v.is_floating_point()}
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_Holder.openai_archive(state)), str(path))
    assert "input_resolution" in torch.jit.load(str(path)).state_dict()
    assert is_torchscript_archive(path)
    with pytest.raises(ConfigError, match="TorchScript archive"):
        create_clip(ClipConfig(model="ViT-B-32", pretrained=str(path)))
    loaded = create_clip(ClipConfig(model=_preset_models()["vit-b-32"], pretrained=str(path)))
    _assert_every_tensor_equal(loaded, state)


def test_building_without_weights_does_not_relay_open_clips_random_init_warning(caplog):
    """open_clip's "No pretrained weights loaded" line would precede evaluate's loading of trained
    weights; the stages state what they load themselves. Other warnings still get through."""
    import logging

    with caplog.at_level(logging.WARNING):
        create_clip(ClipConfig(pretrained=None))
        logging.getLogger().warning("another warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("No pretrained weights loaded") for m in messages)
    assert "another warning" in messages
