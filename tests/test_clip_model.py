import open_clip
import pytest
import torch

from mascot.clip_model import TextEncoder, VisionPrefix, VisionTop, check_split, create_clip, image_size, tokenizer
from mascot.config import ClipConfig
from mascot.errors import ConfigError


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip(ClipConfig(model="mascot-tiny"))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_split_tower_equals_encode_image(clip, k):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = VisionTop(clip.visual, k)(VisionPrefix(clip.visual, k)(images))
        ref = clip.encode_image(images)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_prefix_token_shape(clip):
    tokens = VisionPrefix(clip.visual, 2)(torch.zeros(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + (64 // 16) ** 2, 128)


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


def test_local_checkpoint_is_loaded(tmp_path, clip):
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    loaded = create_clip(ClipConfig(model="mascot-tiny", pretrained=str(path)))
    torch.testing.assert_close(loaded.visual.proj, clip.visual.proj)


def test_unavailable_pretrained_tag_is_a_clear_error():
    from mascot.errors import MascotError

    with pytest.raises(MascotError, match="clip.pretrained"):
        create_clip(ClipConfig(model="mascot-tiny", pretrained="/nonexistent/weights.pt"))
