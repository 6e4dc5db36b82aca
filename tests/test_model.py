import pytest
import torch

from mascot.clip_model import create_clip
from mascot.config import ClipConfig, TrainConfig, VariantConfig
from mascot.model import RetrievalModel, infonce
from mascot.train import optimizer_for


def _model(temporal: str, frames: int = 4) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(
        create_clip(ClipConfig(pretrained=None)), 2, VariantConfig(temporal=temporal, temporal_layers=3), frames
    ).eval()


def _tokens(b=3, t=4):
    torch.manual_seed(1)
    return torch.randn(b, t, 17, 128)


@pytest.mark.parametrize("temporal", ["meanP", "seqTransf"])
def test_padded_frames_do_not_change_the_embedding(temporal):
    model = _model(temporal)
    tokens = _tokens()
    mask = torch.tensor([[True, True, False, False]] * 3)
    with torch.no_grad():
        a = model.encode_video(tokens, mask)
        noisy = tokens.clone()
        noisy[:, 2:] = torch.randn_like(noisy[:, 2:]) * 100
        b = model.encode_video(noisy, mask)
    assert a.shape == (3, 128)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))


def test_seqtransf_uses_order_and_meanp_does_not():
    tokens = _tokens()
    mask = torch.ones(3, 4, dtype=torch.bool)
    flipped = tokens.flip(1)
    with torch.no_grad():
        mean = _model("meanP")
        torch.testing.assert_close(mean.encode_video(tokens, mask), mean.encode_video(flipped, mask))
        seq = _model("seqTransf")
        assert not torch.allclose(seq.encode_video(tokens, mask), seq.encode_video(flipped, mask))


def test_infonce_is_low_for_aligned_pairs():
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    aligned = infonce(x, x, torch.tensor(100.0))
    shuffled = infonce(x, x.roll(1, 0), torch.tensor(100.0))
    assert torch.isfinite(aligned) and aligned < 0.01 < shuffled


def test_optimizer_groups_follow_the_recipe():
    model = _model("seqTransf")
    opt = optimizer_for(model, TrainConfig(lr=1e-4, clip_lr_scale=1e-3, weight_decay=0.2))
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["temporal.frame_position"])]["lr"] == pytest.approx(1e-4)
    assert by_id[id(named["vision.proj"])]["lr"] == pytest.approx(1e-7)
    assert by_id[id(named["vision.ln_post.bias"])]["weight_decay"] == 0.0
    assert by_id[id(named["vision.proj"])]["weight_decay"] == 0.2
    assert by_id[id(named["logit_scale"])]["weight_decay"] == 0.0


def test_logit_scale_is_clamped():
    model = _model("meanP")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)


def test_optimizer_betas_eps_and_clip4clip_no_decay_rule():
    model = _model("seqTransf")
    opt = optimizer_for(model, TrainConfig(adam_betas=(0.9, 0.98), adam_eps=1e-6, no_decay="clip4clip", weight_decay=0.2))
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 for g in opt.param_groups)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    # CLIP4Clip's rule is by name: biases only; LayerNorm weights (ln_*), logit_scale and embeddings decay.
    assert by_id[id(named["vision.ln_post.bias"])]["weight_decay"] == 0.0
    assert by_id[id(named["vision.ln_post.weight"])]["weight_decay"] == 0.2
    assert by_id[id(named["logit_scale"])]["weight_decay"] == 0.2
    assert by_id[id(named["temporal.frame_position"])]["weight_decay"] == 0.2


def test_adam_betas_out_of_range_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="betas"):
        TrainConfig(adam_betas=(0.9, 1.0))
