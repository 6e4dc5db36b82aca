"""One way to build a CLIP backbone, and the split of its vision tower at block L - K.

Models come from open_clip's registry; the project's own configs (src/mascot/model_configs, e.g.
the tiny default) are added to it, so ViT-B-32, ViT-B-16 and `mascot-tiny` are built by the same
call. `clip.pretrained` may be an open_clip tag (downloaded once into the cache), a local checkpoint
file, or null (random weights).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ClipConfig
from .errors import ConfigError, MascotError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: What a model without recorded pixel statistics is normalized with (open_clip's OpenAI values).
DEFAULT_NORMALIZATION = (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))


@functools.cache
def register_model_configs() -> None:
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def model_config(name: str) -> dict:
    register_model_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(
            f"`clip.model: {name}` is not an open_clip model; choose one of open_clip.list_models() "
            f"(e.g. ViT-B-32, ViT-B-16) or add a JSON config to {MODEL_CONFIG_DIR}."
        )
    return cfg


def image_size(name: str) -> int:
    size = model_config(name)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def vision_layers(name: str) -> int:
    return int(model_config(name)["vision_cfg"]["layers"])


def is_torchscript_archive(path: str | Path) -> bool:
    """OpenAI distributes its CLIP weights as TorchScript archives (a zip with a code/ folder)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, IndexError):
        return False


def pretrained_tag(model: str, tag: str) -> tuple[str, dict]:
    """The config open_clip registers a pretrained tag under, and its entry: `model`'s own, else its
    sibling's (plain ↔ -quickgelu; GELU tags are not listed for -quickgelu and vice versa); ("", {})
    when neither lists it. open_clip itself loads a tag only from the model's own entry."""
    sibling = model.removesuffix("-quickgelu") if model.endswith("-quickgelu") else f"{model}-quickgelu"
    for name in (model, sibling):
        entry = open_clip.get_pretrained_cfg(name, tag)
        if entry:
            return name, entry
    return "", {}


def check_activation(cfg: ClipConfig) -> None:
    """Pretrained weights must run with the activation they were trained with.

    OpenAI's CLIP uses QuickGELU; open_clip's plain `ViT-B-32` / `ViT-B-16` configs use GELU and only
    warn when given OpenAI weights, which silently shifts every activation of the tower. For a tag,
    open_clip's registry says how it was trained; a TorchScript archive is OpenAI's own format; a
    state-dict file records nothing, so `clip.weights_activation` must say it.
    """
    if cfg.pretrained is None:
        return
    model_quick = bool(model_config(cfg.model).get("quick_gelu", False))
    _, tag_cfg = pretrained_tag(cfg.model, cfg.pretrained)  # the sibling's entry too: it says how the tag was trained
    if tag_cfg:
        needs_quick, source = bool(tag_cfg.get("quick_gelu", False)), f"the pretrained tag `{cfg.pretrained}`"
    elif Path(cfg.pretrained).is_file() and is_torchscript_archive(cfg.pretrained):
        needs_quick, source = True, f"{cfg.pretrained} is a TorchScript archive, OpenAI's CLIP format"
    elif Path(cfg.pretrained).is_file():
        if cfg.weights_activation is None:
            raise ConfigError(
                f"`clip.pretrained: {cfg.pretrained}` is a state-dict file, which does not record the activation its "
                "weights were trained with. Set `clip.weights_activation: quick_gelu` (OpenAI's CLIP weights, also as "
                "open_clip's `openai` download) or `gelu` (e.g. open_clip's LAION/DataComp weights), so that the "
                f"tower of `clip.model: {cfg.model}` can be checked against it."
            )
        needs_quick, source = cfg.weights_activation == "quick_gelu", f"`clip.weights_activation: {cfg.weights_activation}`"
    else:
        return
    if needs_quick != model_quick:
        want = "QuickGELU" if needs_quick else "GELU"
        base = cfg.model.removesuffix("-quickgelu")
        fix = f"{base}-quickgelu" if needs_quick else base
        register_model_configs()
        fix_text = (
            f"Set `clip.model: {fix}` (open_clip's config with the matching activation)"
            if open_clip.get_model_config(fix) is not None
            else f'Use a model config with `"quick_gelu": {str(needs_quick).lower()}` (e.g. a copy of {cfg.model}\'s JSON in {MODEL_CONFIG_DIR})'
        )
        raise ConfigError(
            f"`clip.pretrained: {cfg.pretrained}` was trained with {want} ({source}), but `clip.model: {cfg.model}` "
            f"builds {'GELU' if needs_quick else 'QuickGELU'} towers, so every activation of the loaded weights would be "
            f"computed with the wrong function. {fix_text}."
        )


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_warning():
    """open_clip warns "No pretrained weights loaded … initialized randomly" on the root logger for
    every model built without weights, also when a checkpoint's weights follow (evaluate) or a
    TorchScript archive is loaded next: the stages say themselves what they load (train warns
    about random weights), so that line only misleads."""
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def create_clip(cfg: ClipConfig) -> nn.Module:
    """Build the open_clip model named in `clip:` (weights per `clip.pretrained`), in eval mode."""
    model_config(cfg.model)
    check_activation(cfg)
    # A tag of the sibling config only never gets here with open_clip's registry (check_activation
    # refuses it: its activation differs); open_clip would not load it either.
    if (
        cfg.pretrained is not None
        and pretrained_tag(cfg.model, cfg.pretrained)[0] != cfg.model
        and not Path(cfg.pretrained).is_file()
    ):
        raise ConfigError(
            f"`clip.pretrained: {cfg.pretrained}` is neither a pretrained tag of {cfg.model} "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(cfg.model)) or 'it has none'}) nor an existing file; "
            "fix the tag or the path, or set it to null for random weights."
        )
    try:
        # Random weights must be the same in every stage that builds the model (the cached bottom
        # blocks and the trained top blocks are one tower), and must not disturb the caller's RNG.
        with torch.random.fork_rng(devices=[]), _without_random_init_warning():
            torch.manual_seed(cfg.init_seed)
            if cfg.pretrained is not None and is_torchscript_archive(cfg.pretrained):
                # torch.load refuses TorchScript with weights_only=True: load OpenAI's archive explicitly.
                model = open_clip.create_model(cfg.model, pretrained=None)
                open_clip.load_checkpoint(model, cfg.pretrained, weights_only=False)
            else:
                model = open_clip.create_model(cfg.model, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir)
    except Exception as exc:
        if cfg.pretrained is None:
            raise
        raise MascotError(
            f"Cannot load weights `clip.pretrained: {cfg.pretrained}` for `clip.model: {cfg.model}` ({exc}). "
            "A pretrained tag needs network access once (then it is cached in clip.cache_dir or $HF_HOME); "
            "offline, point clip.pretrained at a local checkpoint file or set it to null."
        ) from None
    if not isinstance(getattr(model.visual, "patch_dropout", nn.Identity()), nn.Identity):
        raise ConfigError(
            f"`clip.model: {cfg.model}` drops patches at random while training (patch_dropout in its vision_cfg); the "
            "frozen patch embedding (PatchEmbedding) never does. Use a config without patch_dropout."
        )
    return model.eval()


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean and std the model's weights expect (open_clip's OpenAI values when it says none)."""
    return visual_normalization(model.visual)


def visual_normalization(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
    return tuple(mean), tuple(getattr(visual, "image_std", None) or OPENAI_DATASET_STD)


def check_split(model_name: str, trainable_blocks: int, masked_variants: Mapping[str, Sequence[str]] | None = None) -> int:
    """Validate K against the tower depth L (and K = L when a masked variant is trained); return L.

    masked_variants: where the masked variants were listed (`variants`, `ablation.variants`, or
    `train --variant` for a train-stage variant in neither) → their names, so that the error names
    the key to edit.
    """
    depth = vision_layers(model_name)
    if not 1 <= trainable_blocks <= depth:
        raise ConfigError(
            f"`train.trainable_blocks: {trainable_blocks}` must be between 1 and the {depth} vision blocks of {model_name}."
        )
    listed = {where: names for where, names in (masked_variants or {}).items() if names}
    if listed and trainable_blocks < depth:
        raise ConfigError(masking_needs_whole_tower(trainable_blocks, depth, listed, model_name))
    return depth


def masking_needs_whole_tower(
    trainable_blocks: int, depth: int, masked_variants: Mapping[str, Sequence[str]] | None = None, model_name: str | None = None
) -> str:
    """The K = L guard's message (check_split, Objective). masked_variants as in check_split; None
    for a variant known by its settings only (Objective has no name for it, nor the model's)."""
    if masked_variants:
        subject = " and ".join(
            f"`{where}` lists {', '.join(f'`{v}`' for v in names)}" for where, names in masked_variants.items()
        )
        subject += ", which mask patches"
        remedy = "remove the masked variants from " + " and ".join(f"`{where}`" for where in masked_variants)
    else:
        subject, remedy = "This variant masks patches", "train a variant without `mask`"
    return (
        f"{subject} (`objective: mascot`), but `train.trainable_blocks: {trainable_blocks}` caches the output of the "
        f"first {depth - trainable_blocks} of the {depth} vision blocks{f' of {model_name}' if model_name else ''}. "
        "Those blocks have already mixed every patch into every token, so a view that drops patch tokens after them "
        f"would still carry the dropped patches. Set `train.trainable_blocks: {depth}` (the whole tower runs on the "
        f"cached patch embeddings, as in the paper's end-to-end fine-tuning) or {remedy} "
        '(docs/model.md, "Exact masking").'
    )


def drop_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Tokens (n, 1 + N, width) → (n, 1 + P, width): the CLS token, then the patches `keep` (n, P)
    indexes in [0, N), in that order (how a masked view is encoded: by dropping the other patches)."""
    index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]) + 1
    return torch.cat([tokens[:, :1], torch.gather(tokens, 1, index)], dim=1)


class _Blocks(nn.Module):
    """Run a slice of open_clip resblocks on batch-first tokens, whatever layout the tower uses.

    With `checkpointing` (train.grad_checkpointing) each block keeps only its input for the backward
    pass and recomputes its activations there: the same gradients for one more forward pass of the block.
    """

    def __init__(self, blocks: list[nn.Module], batch_first: bool, checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.batch_first = batch_first
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in self.blocks:
            x = recomputed(block, x) if self.checkpointing else block(x)
        return x if self.batch_first else x.transpose(0, 1)


def recomputed(fn, *args):
    """fn(*args), its activations recomputed in the backward pass instead of kept (when grads are on)."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False)


class PatchEmbedding(nn.Module):
    """uint8 frames → the input of block 0: CLIP's normalization, then open_clip's own `_embeds`
    steps (conv1 patches, CLS token, position embeddings, ln_pre) over the same modules, without the
    rest of the tower. Patch dropout is not applied (it is off in every model we build; `create_clip`
    refuses one with it on)."""

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.conv1, self.ln_pre = visual.conv1, visual.ln_pre
        self.class_embedding, self.positional_embedding = visual.class_embedding, visual.positional_embedding
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n, S, S, 3) on the module's device → tokens (n, 1 + N, width), in fp32 whatever the
        autocast around it: the frozen embedding is a few per cent of the tower, computed exactly (as
        the token cache was computed, before being stored in fp16)."""
        with torch.autocast(frames.device.type, enabled=False):
            x = frames.permute(0, 3, 1, 2).float().div_(255.0).sub_(self.mean).div_(self.std)  # in place: one float copy
            x = self.conv1(x).flatten(2).transpose(1, 2)
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
            return self.ln_pre(x)


class VisionPrefix(nn.Module):
    """The frozen bottom of the tower: patch embedding and the first L - K blocks. The features
    stage caches its output when K < L; at K = L it is the patch embedding alone, which the model
    runs on the frames themselves (RetrievalModel.frame_tokens)."""

    def __init__(self, visual: nn.Module, trainable_blocks: int):
        super().__init__()
        self.embed = PatchEmbedding(visual, *visual_normalization(visual))
        blocks = list(visual.transformer.resblocks)
        self.blocks = _Blocks(blocks[: len(blocks) - trainable_blocks], visual.transformer.batch_first)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (n, S, S, 3) → tokens (n, 1 + N, width) at the input of block L - K."""
        return self.blocks(self.embed(frames))


def tokens_per_frame(model_name: str) -> tuple[int, int]:
    """(1 + N, width) of the tokens a frame becomes in the vision tower of `model_name`."""
    vision = model_config(model_name)["vision_cfg"]
    grid = image_size(model_name) // vision["patch_size"]
    return 1 + grid * grid, vision["width"]


@dataclass
class TowerOutput:
    """What the top of the tower gives for n frames (P = patches kept, N = all patches)."""

    embedding: torch.Tensor  # (n, D): proj(ln_post(CLS)), the frame embedding
    patches: torch.Tensor  # (n, P, width): ln_post of the kept patch tokens, in the order of `keep`
    cls_attention: torch.Tensor | None  # (n, P): last block's head-averaged CLS→patch attention


def block_with_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip ResidualAttentionBlock on batch-first x, also returning its head-averaged
    attention weights, from the same forward pass (open_clip itself never asks for them)."""
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
        raise ConfigError(
            f"{type(block).__name__}: CLS attention needs open_clip's ResidualAttentionBlock (nn.MultiheadAttention)."
        )
    h = block.ln_1(x)
    if not block.attn.batch_first:
        h = h.transpose(0, 1)
    out, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)
    if not block.attn.batch_first:
        out = out.transpose(0, 1)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


class VisionTop(nn.Module):
    """The trainable top K blocks, ln_post and proj, run on cached tokens.

    `run` drops patch tokens per frame (MASCOT's masked views are encoded by dropping, docs/model.md,
    section "One training step of MASCOT") and can return the last block's CLS→patch attention of the same pass.
    """

    def __init__(self, visual: nn.Module, trainable_blocks: int):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ConfigError("Only CLS-pooled open_clip ViTs are supported (no attentional pooling).")
        blocks = list(visual.transformer.resblocks)
        self.blocks = _Blocks(blocks[len(blocks) - trainable_blocks :], visual.transformer.batch_first)
        # Dropping tokens is a mask only when no block has mixed them yet (K = L): see masking_needs_whole_tower.
        self.depth = len(blocks)  # L
        self.whole_tower = trainable_blocks == self.depth
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        # Frozen patch position embeddings (no CLS; part of the cached prefix): the ISC decoder's
        # queries use them to say *where* a masked patch was.
        self.register_buffer("patch_positions", visual.positional_embedding[1:].detach().clone(), persistent=False)

    @property
    def width(self) -> int:
        return self.ln_post.normalized_shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj if self.proj is not None else x

    def run(self, tokens: torch.Tensor, keep: torch.Tensor | None = None, attention: bool = False) -> TowerOutput:
        """Tokens (n, 1 + N, width) at the input of block L - K → TowerOutput.

        keep: (n, P) indices in [0, N) of the patches that go on (the CLS token always does);
        None keeps all. attention: also return the last block's CLS→patch attention.
        """
        if keep is not None:
            tokens = drop_tokens(tokens, keep)
        weights = None
        if attention:
            *head, last = self.blocks.blocks
            x = _Blocks(head, self.blocks.batch_first, self.blocks.checkpointing)(tokens)
            x, weights = recomputed(block_with_attention, last, x) if self.blocks.checkpointing else block_with_attention(last, x)
            weights = weights[:, 0, 1:]
        else:
            x = self.blocks(tokens)
        x = self.ln_post(x)
        return TowerOutput(self.project(x[:, 0]), x[:, 1:], weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.run(tokens).embedding


class TextEncoder(nn.Module):
    """CLIP's text tower at any length ≤ its context: the EOT feature, projected.

    open_clip's `encode_text` adds the full 77-position embedding, so shorter token sequences
    (32 words in the CLIP4Clip protocol) need this slice-aware forward over the same modules.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        src = clip.text if hasattr(clip, "text") else clip
        if getattr(src, "cls_emb", None) is not None:
            raise ConfigError("Text towers with a class token (CoCa-style) are not supported.")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def forward(self, tokens: torch.Tensor, return_tokens: bool = False):
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if isinstance(self.text_projection, nn.Linear):
            eot = self.text_projection(eot)
        elif self.text_projection is not None:
            eot = eot @ self.text_projection
        return (eot, x) if return_tokens else eot


def tokenizer(model_name: str, max_words: int):
    """open_clip's tokenizer for the model, producing `max_words` tokens per caption."""
    register_model_configs()
    context = model_config(model_name)["text_cfg"].get("context_length", 77)
    if max_words > context:
        raise ConfigError(f"`features.max_words: {max_words}` exceeds the text context of {model_name} ({context}).")
    tok = open_clip.get_tokenizer(model_name)
    return functools.partial(tok, context_length=max_words)
