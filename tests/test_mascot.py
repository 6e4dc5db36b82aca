"""MASCOT's parts (docs/model.md, section "One training step of MASCOT"): the tower runner, the masks, ISC, the objective."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from mascot.clip_model import TowerOutput, VisionPrefix, VisionTop, block_with_attention, create_clip, normalization
from mascot.config import ClipConfig, IscConfig, MaskConfig, TrainConfig, VariantConfig, load_params
from mascot.errors import ConfigError
from mascot.isc import ISCDecoder, completion_loss
from mascot.masking import informed_masks, masked_count, patch_scores
from mascot.metrics import text_video_metrics
from mascot.model import RetrievalModel, infonce
from mascot.objective import Objective
from mascot.train import optimizer_for

from .conftest import REPO

K = load_params(REPO / "params.yaml").train.trainable_blocks  # the tiny default: K = L = 4 (exact masking)
MASCOT = VariantConfig(temporal="meanP", mask=MaskConfig())


def _objective(variant: VariantConfig = MASCOT, frames: int = 4) -> tuple[Objective, torch.nn.Module]:
    clip = create_clip(ClipConfig(pretrained=None))
    torch.manual_seed(0)
    return Objective(RetrievalModel(clip, K, variant, frames), variant), clip


def _batch(b: int = 4, t: int = 4, n_patches: int = 16, width: int = 128, words: int = 12):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(b, t, 1 + n_patches, width, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 2:] = False  # a short video
    text = torch.randint(1, 49000, (b, words), generator=g)
    eot = torch.tensor([5, 7, 11, 9][:b])
    text[torch.arange(b), eot] = 49407
    text[torch.arange(words) > eot[:, None]] = 0
    return tokens, mask, text


# --- the vision tower runner -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mascot-tiny", pytest.param("ViT-B-32", marks=pytest.mark.heavy), pytest.param("ViT-B-16", marks=pytest.mark.heavy)]
)
def test_runner_with_every_block_matches_open_clip(name):
    clip = create_clip(ClipConfig(model=name, pretrained=None))
    depth = len(clip.visual.transformer.resblocks)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    frames = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(clip))
    with torch.no_grad():
        tokens = VisionPrefix(clip.visual, depth)(frames)  # patch embedding only
        out = VisionTop(clip.visual, depth).run(tokens, attention=True)
        reference = clip.encode_image((frames.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    torch.testing.assert_close(out.embedding, reference, atol=1e-5, rtol=1e-5)
    n = tokens.shape[1] - 1
    assert out.patches.shape == (2, n, clip.visual.transformer.width)
    assert out.cls_attention.shape == (2, n)
    assert (out.cls_attention >= 0).all() and (out.cls_attention.sum(1) < 1 + 1e-6).all()


def test_block_with_attention_is_the_block():
    clip = create_clip(ClipConfig(pretrained=None))
    block = clip.visual.transformer.resblocks[-1]
    x = torch.randn(3, 17, 128)
    with torch.no_grad():
        y, weights = block_with_attention(block, x)
        torch.testing.assert_close(y, block(x), atol=1e-6, rtol=1e-6)
    assert weights.shape == (3, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 17))


def test_dropped_patches_have_no_influence():
    clip = create_clip(ClipConfig(pretrained=None))
    top = VisionTop(clip.visual, K)
    tokens = torch.randn(2, 17, 128)
    keep = torch.tensor([[0, 3, 4, 9], [1, 2, 14, 15]])
    changed = tokens.clone()
    dropped = torch.ones(2, 16, dtype=torch.bool)
    dropped[torch.arange(2)[:, None], keep] = False
    changed[:, 1:][dropped] = 1e3
    with torch.no_grad():
        a, b = top.run(tokens, keep=keep, attention=True), top.run(changed, keep=keep, attention=True)
    torch.testing.assert_close(a.embedding, b.embedding)
    assert a.patches.shape == (2, 4, 128) and a.cls_attention.shape == (2, 4)


# --- exact masking: a masked view carries nothing of its dropped patches -------------------------


def _pixels_of(patches: torch.Tensor, size: int = 64, patch: int = 16) -> torch.Tensor:
    """(n, m) patch indices → (n, size, size, 1) bool: the pixels of those patches (row-major grid)."""
    grid = size // patch
    cells = torch.zeros(patches.shape[0], grid * grid, dtype=torch.bool)
    cells[torch.arange(len(patches))[:, None], patches] = True
    return cells.view(-1, grid, grid, 1).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def _masked_variants() -> list[str]:
    params = load_params(REPO / "params.yaml")
    return [name for name in params.variant_defs if params.variant(name).mask is not None]


def _images(n: int, seed: int) -> torch.Tensor:
    """n uint8 frames (n, 64, 64, 3), as the frames stage stores them."""
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "k", sorted({1, 2, 4, K}), ids=lambda k: f"K{k}" + ("=L" if k == 4 else "") + (" (default)" if k == K else "")
)
@pytest.mark.parametrize("name", _masked_variants())
def test_masked_view_is_bit_identical_when_dropped_pixels_change(name, k):
    from mascot.clip_model import check_split

    params = load_params(REPO / "params.yaml")
    variant, depth = params.variant(name), 4
    clip = create_clip(ClipConfig(pretrained=None))
    if k < depth:  # the cached frozen blocks would mix dropped patches into every token: refused
        with pytest.raises(ConfigError, match=r"`train.trainable_blocks: 4`"):
            check_split("mascot-tiny", k, {"variants": [name]})
        with pytest.raises(ConfigError, match="trainable_blocks"):
            Objective(RetrievalModel(clip, k, variant, 2), variant)
        return
    torch.manual_seed(0)
    objective = Objective(RetrievalModel(clip, k, variant, 2), variant).train()
    prefix = VisionPrefix(clip.visual, k)
    images = _images(6, 3)  # 3 videos × 2 frames
    _, _, text = _batch(b=3)
    with torch.no_grad():
        # K = L: the objective embeds the frames' patches itself (RetrievalModel.frame_tokens)
        step = objective.step(images.view(3, 2, 64, 64, 3), torch.ones(3, 2, dtype=torch.bool), text)
        for view in ("high", "low"):
            drop = step.masks.view(view)
            changed = torch.where(_pixels_of(drop.masked), _images(6, 4), images)
            assert not torch.equal(changed, images)
            before = objective.model.vision.run(prefix(images), keep=drop.visible)
            after = objective.model.vision.run(prefix(changed), keep=drop.visible)
            assert torch.equal(before.embedding, after.embedding), view
            assert torch.equal(before.patches, after.patches), view
            # ... and it is the view the objective trained on (its embedding and the patches ISC sees)
            torch.testing.assert_close(before.embedding, step.views[view].embedding, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(before.patches, step.views[view].patches, atol=1e-5, rtol=1e-5)
            # positive control: changing the *visible* pixels does change the view
            seen = torch.where(_pixels_of(drop.visible), _images(6, 5), images)
            assert not torch.equal(objective.model.vision.run(prefix(seen), keep=drop.visible).embedding, before.embedding)


def test_dropping_tokens_after_frozen_blocks_would_leak():
    """Why K < L is refused: the same drop after 2 cached blocks changes with the dropped pixels."""
    clip = create_clip(ClipConfig(pretrained=None))
    prefix, top = VisionPrefix(clip.visual, 2), VisionTop(clip.visual, 2)
    images = _images(4, 3)
    visible = torch.arange(8, 16).expand(4, 8)
    changed = torch.where(_pixels_of(torch.arange(8).expand(4, 8)), _images(4, 4), images)
    with torch.no_grad():
        a, b = top.run(prefix(images), keep=visible).embedding, top.run(prefix(changed), keep=visible).embedding
    assert (a - b).norm() / a.norm() > 1e-3


# --- masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_masks_have_the_exact_ratio_and_partition_each_frame(ratio):
    scores = torch.rand(6, 49)
    masks = informed_masks(scores, ratio)
    m = math.ceil(ratio * 49)
    for view in (masks.high, masks.low):
        assert view.masked.shape == (6, m) and view.visible.shape == (6, 49 - m)
        both = torch.cat([view.masked, view.visible], 1).sort(1).values
        assert torch.equal(both, torch.arange(49).expand(6, 49))


def test_high_mask_holds_the_top_patches_and_low_the_bottom():
    scores = torch.rand(5, 16)
    masks = informed_masks(scores, 0.25)
    top = scores.topk(4, dim=1).indices.sort(1).values
    bottom = (-scores).topk(4, dim=1).indices.sort(1).values
    assert torch.equal(masks.high.masked.sort(1).values, top)
    assert torch.equal(masks.low.masked.sort(1).values, bottom)
    assert (scores.gather(1, masks.high.masked).min(1).values >= scores.gather(1, masks.high.visible).max(1).values).all()


def test_masked_count_keeps_one_patch_visible():
    assert masked_count(0.5, 49) == 25 and masked_count(0.5, 196) == 98 and masked_count(0.99, 4) == 3


def test_scores():
    attn = torch.rand(3, 16)
    patches = torch.randn(3, 16, 8)
    text = torch.randn(3, 8)
    assert torch.equal(patch_scores(MaskConfig(score="cls_attn"), attn, patches, text), attn)
    sim = patch_scores(MaskConfig(score="text_sim"), None, patches, text)
    expected = torch.nn.functional.cosine_similarity(patches, text[:, None], dim=-1)
    torch.testing.assert_close(sim, expected)
    torch.manual_seed(0)
    a = patch_scores(MaskConfig(score="random"), None, patches, text)
    torch.manual_seed(0)
    assert a.shape == (3, 16) and torch.equal(a, patch_scores(MaskConfig(score="random"), None, patches, text))


# --- ISC ---------------------------------------------------------------------------------------


def test_completion_loss_known_answers():
    x = torch.randn(4, 3, 8)
    assert completion_loss(x, x).abs().item() < 1e-6
    assert completion_loss(-x, x).item() == pytest.approx(2.0)
    assert completion_loss(2 * x, x).abs().item() < 1e-6  # scale-free (the target is L2-normalised)


def test_decoder_shapes_and_text_padding_is_ignored():
    torch.manual_seed(0)
    decoder = ISCDecoder(IscConfig(), 128, 64)
    visible, masked, positions = torch.randn(5, 8, 128), torch.randint(0, 16, (5, 8)), torch.randn(16, 128)
    text = decoder.text_proj(torch.randn(5, 6, 64))
    valid = torch.tensor([[True] * 3 + [False] * 3] * 5)
    out = decoder(visible, masked, positions, text, valid)
    assert out.shape == (5, 8, 128)
    noisy = text.clone()
    noisy[:, 3:] = 1e3
    torch.testing.assert_close(decoder(visible, masked, positions, noisy, valid), out)
    with pytest.raises(ConfigError, match="isc.heads"):
        ISCDecoder(IscConfig(heads=3), 128, 64)


def _completion_inputs(views: str):
    variant = MASCOT.model_copy(update={"isc": IscConfig(views=views)})
    objective, _ = _objective(variant)
    n, width = 6, 128
    scores = torch.rand(n, 16)
    masks = informed_masks(scores, 0.25)  # 4 masked per view, disjoint high and low sets
    outputs = {
        "full": TowerOutput(torch.randn(n, 128), torch.randn(n, 16, width), None),
        "high": TowerOutput(torch.randn(n, 128), torch.randn(n, 12, width, requires_grad=True), None),
        "low": TowerOutput(torch.randn(n, 128), torch.randn(n, 12, width, requires_grad=True), None),
    }
    _, _, text = _batch(b=2)
    states = torch.randn(2, text.shape[1], objective.model.text.width)
    frame_video = torch.tensor([0, 0, 0, 1, 1, 1])
    return objective, outputs, masks, (text, states, frame_video)


def test_isc_counts_only_masked_positions_of_the_selected_views():
    objective, views, masks, text = _completion_inputs("high")
    base = objective.completion(views, masks, *text)
    # Changing the target anywhere outside the high mask (visible patches, low-only patches) changes nothing.
    outside = torch.ones(6, 16, dtype=torch.bool)
    outside[torch.arange(6)[:, None], masks.high.masked] = False
    changed = dict(
        views, full=TowerOutput(views["full"].embedding, views["full"].patches.masked_fill(outside[..., None], 5.0), None)
    )
    torch.testing.assert_close(objective.completion(changed, masks, *text), base)
    # Changing the target at a high-masked position does.
    inside = dict(
        views, full=TowerOutput(views["full"].embedding, views["full"].patches.masked_fill(~outside[..., None], 5.0), None)
    )
    assert not torch.allclose(objective.completion(inside, masks, *text), base)


def test_emphasis_shift_keeps_the_low_view_out_of_the_gradients():
    for views_cfg, reaches_low in (("high", False), ("both", True)):
        objective, views, masks, text = _completion_inputs(views_cfg)
        loss = objective.completion(views, masks, *text)
        grad_high, grad_low = torch.autograd.grad(loss, [views["high"].patches, views["low"].patches], allow_unused=True)
        assert grad_high is not None and grad_high.abs().sum() > 0
        assert (grad_low is not None and grad_low.abs().sum() > 0) == reaches_low


# --- the objective -----------------------------------------------------------------------------


def test_every_variant_of_params_gives_finite_losses():
    params = load_params(REPO / "params.yaml")
    tokens, mask, text = _batch()
    for name in params.variant_defs:
        variant = params.variant(name)
        objective, _ = _objective(variant)
        step = objective.train().step(tokens, mask, text)
        assert all(torch.isfinite(v) for v in step.terms.values()), name
        expected = (
            {"nce", "loss"}
            | ({"nce_masked", "kl"} if variant.mask else set())
            | ({"isc"} if variant.mask and variant.isc.weight else set())
        )
        assert set(step.terms) == expected, name
        step.terms["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in objective.parameters() if p.grad is not None), name


def test_objective_weights_combine_the_terms():
    objective, _ = _objective()
    terms = objective.train().step(*_batch()).terms
    d = MASCOT.dual
    expected = terms["nce"] + d.weight * terms["nce_masked"] + d.kl_weight * terms["kl"] + MASCOT.isc.weight * terms["isc"]
    torch.testing.assert_close(terms["loss"], expected)


def test_eval_mode_masks_nothing_and_is_deterministic():
    objective, _ = _objective()
    objective.eval()
    tokens, mask, text = _batch()
    with torch.no_grad():
        a, b = objective.step(tokens, mask, text), objective.step(tokens, mask, text)
    assert a.masks is None and set(a.views) == {"full"} and set(a.terms) == {"nce", "loss"}
    torch.testing.assert_close(a.terms["loss"], b.terms["loss"], rtol=0, atol=0)
    model = objective.model
    with torch.no_grad():
        expected = infonce(model.encode_text(text), model.encode_video(tokens, mask), model.scale())
    torch.testing.assert_close(a.terms["nce"], expected, atol=1e-5, rtol=1e-5)  # the base model's loss
    assert objective.training is False and model.training is False


def test_training_mode_masks_every_valid_frame():
    objective, _ = _objective()
    tokens, mask, text = _batch()
    step = objective.train().step(tokens, mask, text)
    frames = int(mask.sum())
    assert step.masks.high.masked.shape == (frames, 8) and step.views["high"].patches.shape == (frames, 8, 128)


def test_frozen_blocks_get_no_gradient_and_trained_parts_do():
    objective, clip = _objective()
    objective.train().step(*_batch()).terms["loss"].backward()
    blocks = clip.visual.transformer.resblocks
    frozen = [clip.visual.conv1.weight, clip.visual.class_embedding, clip.visual.positional_embedding]
    frozen += list(clip.visual.ln_pre.parameters())  # cached with the patch embedding, even at K = L
    frozen += [p for b in blocks[: len(blocks) - K] for p in b.parameters()]
    assert all(p.grad is None for p in frozen)
    trained = [p for b in blocks[len(blocks) - K :] for p in b.parameters()] + list(objective.decoder.parameters())
    assert len(trained) > len(list(objective.decoder.parameters()))
    assert all(p.grad is not None for p in trained)
    assert objective.model.vision.patch_positions.requires_grad is False


def test_decoder_trains_at_the_new_module_rate():
    objective, _ = _objective()
    opt = optimizer_for(objective, TrainConfig(lr=1e-4, clip_lr_scale=1e-3))
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(objective.decoder.mask_token)] == pytest.approx(1e-4)
    assert by_id[id(objective.model.vision.proj)] == pytest.approx(1e-7)


def test_checkpoint_holds_only_the_inference_model():
    objective, _ = _objective()
    assert not any(k.startswith("decoder") for k in objective.model.state_dict())
    assert any(k.startswith("decoder.") for k in objective.state_dict())


def test_mascot_fits_eight_pairs(tiny_features):
    """It can learn: on 8 video–caption pairs the MASCOT objective reaches R@1 = 100 % both ways."""
    from mascot.features import FeatureStore

    store = FeatureStore.open(tiny_features)
    rows = store.caption_rows("train")
    captions = store.captions.iloc[rows]
    # one caption per video, distinct texts, 8 pairs
    pick = captions.drop_duplicates("video_index").drop_duplicates("caption").index.to_numpy()[:8]
    assert len(pick) == 8
    tokens, mask, text = store.pairs(pick)
    objective, _ = _objective(MASCOT, frames=tokens.shape[1])
    opt = optimizer_for(objective, TrainConfig(lr=2e-3, clip_lr_scale=1.0))
    objective.train()
    for _ in range(60):
        loss = objective(tokens, mask, text)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = objective.model.eval()
    with torch.no_grad():
        sim = (model.encode_text(text) @ model.encode_video(tokens, mask).t()).numpy()
    metrics = text_video_metrics(sim, np.arange(8))
    assert metrics["t2v"]["R1"] == 100.0 and metrics["v2t"]["R1"] == 100.0


@pytest.mark.parametrize("name", ["meanP", "seqTransf", "random_masks", "mascot"])
def test_grad_checkpointing_gives_the_plain_steps_loss_and_gradients(name, monkeypatch):
    """train.grad_checkpointing recomputes every block (vision, attention-returning last block, text)
    in the backward pass: the same computation, so the loss and every gradient are bit-identical."""
    variant = load_params(REPO / "params.yaml").variant(name)
    recomputed = []
    original = torch.utils.checkpoint.checkpoint

    def counting(fn, *args, **kwargs):
        recomputed.append(fn)
        return original(fn, *args, **kwargs)

    monkeypatch.setattr("mascot.clip_model.checkpoint", counting)
    monkeypatch.setattr("open_clip.transformer.checkpoint", counting)
    results = []
    for enabled in (False, True):
        objective, _ = _objective(variant)
        objective.model.set_grad_checkpointing(enabled)
        torch.manual_seed(3)  # the same random masks in both runs
        loss = objective(*_batch())["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (ckpt_loss, ckpt) = results
    vision, text = objective.model.vision.blocks.blocks, objective.model.text.transformer.resblocks
    assert len(recomputed) >= len(vision) + len(text)  # every block of both towers was checkpointed
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for n, g in plain.items():
        assert torch.equal(g, ckpt[n]), n


@pytest.mark.parametrize(
    "name", ["meanP", "seqTransf", "random_masks", "mascot_random", "attention_masks", "isc_both", "mascot", "mascot_text_sim"]
)
@pytest.mark.parametrize("chunk", [1, 3])
def test_gradient_caching_gives_the_plain_steps_loss_and_gradients(name, chunk):
    """train.grad_cache_chunk: the batch in chunks of 1 or 3 pairs (4 = 3 + 1: uneven) gives the
    loss terms and every gradient of the one-graph step, up to float rounding. Random masks too: on
    the CPU a chunk's draw is the whole batch's draw for its rows, provided the second pass replays
    the generator (without the replay the gradients differ by ~10 %)."""
    variant = load_params(REPO / "params.yaml").variant(name)
    objective, _ = _objective(variant)
    batch = _batch()
    torch.manual_seed(3)  # random masks: the same generator state for both
    step = objective.step(*batch)
    step.terms["loss"].backward()
    plain = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    objective.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    terms = objective.cached_step(*batch, chunk, contextlib.nullcontext)
    assert terms.keys() == step.terms.keys()
    for key, value in step.terms.items():
        torch.testing.assert_close(terms[key], value.detach(), rtol=1e-5, atol=1e-6)
    cached = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
    assert cached.keys() == plain.keys() and len(plain) > 0
    for n, g in plain.items():  # float rounding: sums over the batch are added in another order
        assert (cached[n] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-9, n
