"""Measurements on token activations and attention maps (the paper's Sec. 2).

One forward pass (:func:`collect`) keeps everything a figure needs: patch embeddings, every
block's tokens and token norms, every attention map, the final tokens -- or, for a large
pretrained model, every block's norms but the tokens of only the blocks that are read, and the
attention each key receives instead of the maps. The functions below read that
:class:`Features` object; the probes that *train* something live in :mod:`regvit_lib.probes`.
Both work on our :class:`~regvit_lib.model.RegViT` and on any timm ``VisionTransformer``
(converted exactly by :mod:`regvit_lib.timm_interop`), so the code that studies our small
models also studies pretrained DINOv2.

Which paper figure each function serves:

* :func:`ratio_per_layer`, :func:`detect_outliers` -- Fig. 3 (norm histogram), Fig. 4 (per layer,
  over training, over model size), Fig. 7 (with registers);
* :func:`neighbour_similarity` -- Fig. 5a (outliers sit on redundant patches);
* :func:`attention_to_patches` -- Fig. 2 and Fig. 9 (attention of [CLS] and registers);
* :func:`pca_rgb` -- the PCA feature maps of Fig. 1 / Fig. 14;
* :func:`plant_outliers` -- a positive control: make a model *have* outliers, to see what each
  figure looks like when the artifact is present (and to test the detectors).

**The outlier rule.** The paper cuts DINOv2-g's norms at a hand-picked 150. We compare each
patch token with **the median norm of the patch tokens of the same image in the same layer**
and call it an outlier above ``k`` times that median (``k = 4`` by default, exposed
everywhere). Per-image medians matter: against a global median, an image whose tokens are
all large would look like a set of outliers (a pitfall seen in the emergence runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .data import normalize
from .model import Block, Encoder, RegViT, split_tokens
from .summaries import norm_ratio, received_attention, split_norms, studied_block

__all__ = ["OUTLIER_K", "Features", "as_regvit", "collect", "block_tokens", "tokens_at", "norms_at", "ratio_per_layer",
           "peak_of_norms", "peak_layer", "Outliers", "detect_outliers", "neighbour_similarity", "top_token_placement",
           "attention_to_patches", "pca_rgb", "lost_keys", "plant_outliers", "positive_control"]

OUTLIER_K = 4.0  # a patch token is an outlier above OUTLIER_K x its image's median norm


def as_regvit(model: nn.Module) -> RegViT:
    """Our model as is; a timm ``VisionTransformer`` converted exactly (same function).

    Raises:
        ValueError: the timm model has forward (pre-)hooks, which the converted copy would drop silently.
    """
    if isinstance(model, RegViT):
        return model
    hooked = [name or "(the model itself)" for name, mod in model.named_modules()
              if mod._forward_hooks or mod._forward_pre_hooks]
    if hooked:
        raise ValueError(f"the {type(model).__name__} has forward hooks on {', '.join(hooked)}, which converting "
                         "it to a RegViT would silently drop; convert it first with as_regvit / regvit_from_timm "
                         "and register the hooks on the converted model")
    from .timm_interop import regvit_from_timm

    return regvit_from_timm(model)  # type: ignore[arg-type]


@dataclass
class Features:
    """Everything one forward pass shows about a set of images (all on the CPU).

    Layers are indexed ``0 .. depth-1`` (block outputs, before the final norm; ``-1`` is the last
    block); ``"final"`` names the final-normed output tokens. Norms are studied on block
    outputs (the final LayerNorm rescales every token); the dense probes read ``"final"``.
    """

    cfg: ModelConfig
    images: Tensor  # (B, 3, H, W) in [0, 1]
    embed: Tensor  # (B, N, D) patch embeddings, before the position embedding
    layers: tuple[int, ...]  # the blocks whose tokens are kept (all, unless collect was told otherwise)
    blocks: Tensor  # (B, len(layers), T, D) those blocks' outputs
    norms: Tensor  # (B, L, T) every block's token norms
    final: Tensor  # (B, T, D) after the final norm
    attn: Tensor | None  # (B, L, H, T, T), if collected
    received: Tensor | None  # (B, L, H, T) per head, each key's mean attention from the patch queries
    labels: Tensor | None = None  # (B,) class labels, if given

    @property
    def grid(self) -> int:
        return self.cfg.grid_size


@torch.no_grad()
def collect(model: nn.Module, images: Tensor, labels: Tensor | None = None, attn: bool | str = True,
            batch_size: int = 64,
            layers: Sequence[int] | Callable[[Tensor], Sequence[int]] | None = None) -> Features:
    """Run ``model`` once over ``images`` (in [0, 1]) and keep its tokens and attention.

    Args:
        model: a :class:`RegViT` or a timm ``VisionTransformer``.
        images: ``(B, 3, H, W)`` in [0, 1]; normalised here as in training.
        labels: optional class labels, carried along for the probes.
        attn: ``True`` keeps every attention map (memory: B x L x H x T^2 floats) and what each
            key receives from the patch queries; ``"received"`` only the latter (B x L x H x T,
            all the sink measurements read); ``False`` neither.
        batch_size: images per forward pass.
        layers: the blocks whose tokens are kept (B x T x D floats each; the norms of every
            block are always kept). ``None`` keeps all; a function of the first batch's token
            norms ``(b, L, T)`` picks them after that batch -- how a pretrained ViT-L, 25 MB of
            tokens per image, keeps the two blocks its measurements read.
    """
    if attn not in (True, False, "received"):
        raise ValueError(f"attn must be True, False or 'received', got {attn!r}")
    m = model if isinstance(model, Encoder) else as_regvit(model)  # chapter 5's methods are encoders too
    was_training = m.training
    m.eval()
    dev = next(m.parameters()).device
    kept: tuple[int, ...] | None = None
    parts = []
    for batch in images.split(batch_size):
        out = m.forward_features(normalize(batch.to(dev)), return_blocks=True, return_attn=bool(attn))
        blocks = out["blocks"].float()
        part = {"embed": out["embed"].float().cpu(), "final": out["tokens"].float().cpu(),
                "norms": blocks.norm(dim=-1).cpu()}
        if attn and "attn" in out:  # a model without attention maps (Mamba, H-MHSA) has none to keep
            part["received"] = received_attention(out["attn"], m.cfg.num_prefix_tokens).cpu()
        if attn is True and "attn" in out:
            part["attn"] = out["attn"].float().cpu()
        if kept is None:
            depth = blocks.shape[1]  # the blocks that hold every token (a method may drop the patches)
            chosen = range(depth) if layers is None else layers(part["norms"]) if callable(layers) else layers
            kept = tuple(sorted({_block_index(i, depth) for i in chosen}))
        part["blocks"] = blocks[:, list(kept)].cpu()
        parts.append(part)
    m.train(was_training)
    cat = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return Features(m.cfg, images.cpu(), cat["embed"], kept or (), cat["blocks"], cat["norms"], cat["final"],
                    cat.get("attn"), cat.get("received"), None if labels is None else labels.cpu())


def _block_index(layer: int, depth: int) -> int:
    """``layer`` as an index in ``0 .. depth-1`` (``-1``: the last block); out of range raises."""
    if not -depth <= int(layer) < depth:
        raise IndexError(f"block {layer} does not exist in a model of depth {depth}")
    return int(layer) % depth


def block_tokens(feats: Features, layer: int) -> Tensor:
    """``(B, T, D)``: the output tokens of one block (``-1``: the last), if :func:`collect` kept it."""
    i = _block_index(layer, feats.norms.shape[1])
    if i not in feats.layers:
        raise ValueError(f"block {layer} was not kept by collect(layers=...); kept: {feats.layers}")
    return feats.blocks[:, feats.layers.index(i)]


def tokens_at(feats: Features, layer: int | str = "final") -> dict[str, Tensor]:
    """The named token slices (``cls``, ``reg``, ``patch``) at a block or at the output."""
    x = feats.final if layer == "final" else block_tokens(feats, int(layer))
    return split_tokens(x, feats.cfg.class_token, feats.cfg.num_registers)


def norms_at(feats: Features, layer: int | str = "final") -> dict[str, Tensor]:
    """The token norms (``cls`` ``(B,)``, ``reg`` ``(B, R)``, ``patch`` ``(B, N)``) at any block or at the output."""
    return split_norms(feats.final.norm(dim=-1) if layer == "final" else feats.norms[:, int(layer)], feats.cfg)


def ratio_per_layer(feats: Features) -> Tensor:
    """``(B, L)``: per image and block, the largest patch norm over the image's median patch norm."""
    return _max_ratios(feats.norms, feats.cfg.num_prefix_tokens)


def _max_ratios(norms: Tensor, prefix: int) -> Tensor:
    return norm_ratio(norms[:, :, prefix:]).amax(-1)


def peak_of_norms(norms: Tensor, prefix: int) -> int:
    """The studied block (:func:`regvit_lib.summaries.studied_block`) of token norms ``(B, L, T)``
    whose first ``prefix`` tokens are [CLS] and registers."""
    return studied_block(_max_ratios(norms, prefix).mean(0).tolist())


def peak_layer(feats: Features) -> int:
    """The studied block of these features."""
    return peak_of_norms(feats.norms, feats.cfg.num_prefix_tokens)


@dataclass
class Outliers:
    """High-norm patch tokens of one layer, by :func:`detect_outliers`."""

    mask: Tensor  # (B, N) bool: which patch tokens are outliers
    norms: Tensor  # (B, N) their norms
    ratio: Tensor  # (B, N) norm / the image's median patch norm

    @property
    def share(self) -> float:
        """Share of patch tokens that are outliers (the paper: ~2 % for DINOv2-g)."""
        return float(self.mask.float().mean())

    @property
    def norm_ratio(self) -> float:
        """Mean outlier norm over mean normal norm (the paper: ~10x); NaN without outliers (or normal tokens)."""
        return float(self.norms[self.mask].mean() / self.norms[~self.mask].mean())

    def positions(self) -> list[list[int]]:
        """Per image, the patch indices (row-major over the grid) of its outliers."""
        return [torch.nonzero(row)[:, 0].tolist() for row in self.mask]


def detect_outliers(feats: Features, layer: int | str = -1, k: float = OUTLIER_K) -> Outliers:
    """Patch tokens whose norm exceeds ``k`` times the median patch norm of their image.

    Args:
        feats: from :func:`collect`.
        layer: a block index (default: the last block's output), or ``"final"`` for the output
            after the final LayerNorm -- which rescales every token, so norms there hardly
            differ (on the ``cpu`` model the largest per-image ratio is 2.7 before it, 1.04
            after it).
        k: the multiple of the per-image median above which a token is an outlier.
    """
    if not k > 1:
        raise ValueError(f"k must be > 1 (a multiple of the median), got {k!r}")
    norms = norms_at(feats, layer)["patch"]  # (B, N)
    ratio = norm_ratio(norms)
    return Outliers(ratio > k, norms, ratio)


def neighbour_similarity(feats: Features) -> Tensor:
    """Mean cosine similarity of each patch embedding to its 4 grid neighbours (Fig. 5a).

    Computed on the patch embeddings *before* the position embedding, i.e. on what the patch
    looks like. Border patches average over the neighbours they have.

    Returns:
        ``(B, N)``.
    """
    g = feats.grid
    e = F.normalize(feats.embed, dim=-1).unflatten(1, (g, g))  # (B, g, g, D)
    padded = F.pad(e, (0, 0, 1, 1, 1, 1))  # a ring of zero vectors: no neighbour there
    shifts = ((1, 2), (1, 0), (2, 1), (0, 1))  # where the right, left, lower and upper neighbours sit in `padded`
    total = sum((e * padded[:, y : y + g, x : x + g]).sum(-1) for y, x in shifts)
    count = sum(F.pad(torch.ones(g, g), (1, 1, 1, 1))[y : y + g, x : x + g] for y, x in shifts)  # neighbours there
    return (total / count).flatten(1)


def top_token_placement(feats: Features, background: Tensor | None, layer: int | str = -1) -> dict[str, float]:
    """Where the largest-norm patch token of each image sits: a threshold-free Fig. 5a.

    Args:
        feats: from :func:`collect`.
        background: ``(B, N)`` bool, the patches that show only background; ``None`` where the
            images have no object labels (photographs): the two background numbers are then NaN.
        layer: where the norms are read.

    Returns:
        ``top_on_background`` (share of images whose largest token is on background) against
        the base rate ``background_patches``; ``top_similarity`` (neighbour similarity of those
        tokens' patches, :func:`neighbour_similarity`) against ``all_similarity`` (all patches).
    """
    top = norms_at(feats, layer)["patch"].argmax(1)  # (B,)
    sim = neighbour_similarity(feats)
    rows = torch.arange(len(top))
    nan = float("nan")
    return {"top_on_background": nan if background is None else float(background[rows, top].float().mean()),
            "background_patches": nan if background is None else float(background.float().mean()),
            "top_similarity": float(sim[rows, top].mean()), "all_similarity": float(sim.mean())}


def attention_to_patches(feats: Features, query: str | int = "cls", layer: int = -1) -> Tensor:
    """Attention of one query token to the patches, mean over heads, as maps over the grid (Fig. 2, Fig. 9).

    Args:
        feats: from :func:`collect` with ``attn=True``.
        query: ``"cls"`` or a register index ``0 .. R-1``.
        layer: block index (default: the last).

    Returns:
        ``(B, g, g)``, each map summing to the share of attention that goes to patches.
    """
    if feats.attn is None:
        raise ValueError("these features were collected with attn=False")
    cfg = feats.cfg
    if query == "cls" and cfg.class_token:
        token = 0
    elif isinstance(query, int) and 0 <= query < cfg.num_registers:
        token = int(cfg.class_token) + query
    else:
        raise ValueError(f"query must be 'cls' (if present) or a register index < {cfg.num_registers}, got {query!r}")
    return feats.attn[:, layer].mean(1)[:, token, cfg.num_prefix_tokens :].unflatten(1, (feats.grid, feats.grid))


def pca_rgb(patch_tokens: Tensor, grid: int, components: int = 3) -> Tensor:
    """The first principal components of patch tokens as colours (the paper's PCA maps).

    One PCA is fitted over the patches of all images together, so colours are comparable
    across images; each component is scaled to [0, 1] by its 1st-99th percentiles.

    Args:
        patch_tokens: ``(B, N, D)``.
        grid: patches per side.

    Returns:
        ``(B, grid, grid, components)`` in [0, 1].
    """
    x = patch_tokens.flatten(0, 1).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: principal directions
    sign = torch.sign(v[:components].sum(1, keepdim=True)).clamp_min(0) * 2 - 1  # fixed orientation
    proj = x @ (v[:components] * sign).T  # (B*N, c)
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    return ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).reshape(-1, grid, grid, components).float()


@torch.no_grad()
def lost_keys(model: nn.Module, feats: Features, block: int = -1) -> Tensor:
    """The attention *keys* of the patches in one block (default: the last), LOST's features
    (Simeoni et al. 2021).

    Returns:
        ``(B, N, D)``: the keys of all heads, concatenated.
    """
    m = model if isinstance(model, RegViT) else as_regvit(model)
    dev = next(m.parameters()).device
    b = _block_index(block, m.cfg.depth)
    blk = m.blocks[b]
    assert isinstance(blk, Block)
    # The block's input: the previous block's output (or the embedded tokens).
    x_in = block_tokens(feats, b - 1).to(dev) if b > 0 else m._pos_embed(feats.embed.to(dev))
    keys = blk.attn.qkv(blk.norm1(x_in)).chunk(3, dim=-1)[1]  # (B, T, D): the middle third of q, k, v
    return keys[:, m.cfg.num_prefix_tokens :].float().cpu()


@contextmanager
def plant_outliers(model: RegViT, layer: int, positions: Tensor, factor: float = 10.0) -> Iterator[None]:
    """Make ``model`` have outliers: a positive control for every figure and test.

    While the context is active, the output of block ``layer`` is changed at the given patch
    positions: each chosen token is replaced by the mean of its image's patch tokens, rescaled to
    ``factor`` times the image's median patch norm (the paper's picture of an outlier: large, and
    holding global rather than local information).

    Args:
        model: a :class:`RegViT`.
        layer: block index whose output is changed.
        positions: ``(B, k)`` patch indices per image, or ``(k,)`` for the same ones in all.
        factor: the norm multiplier.
    """
    P = model.cfg.num_prefix_tokens
    seen = [0]  # images already through the hook: per-image positions follow batch after batch

    def hook(_module: nn.Module, _inputs: Any, output: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
        x, attn = output
        B = x.shape[0]
        pos = (positions.expand(B, -1) if positions.ndim == 1 else positions[seen[0] : seen[0] + B]).to(x.device)
        seen[0] += B
        x = x.clone()
        mean = x[:, P:].mean(1, keepdim=True)  # (B, 1, D): the image's mean patch token
        scale = factor * x[:, P:].norm(dim=-1).median(dim=1).values[:, None, None] / mean.norm(dim=-1, keepdim=True)
        x[torch.arange(B, device=x.device)[:, None], P + pos] = scale * mean
        return x, attn

    with model.blocks[layer].register_forward_hook(hook):
        yield


def positive_control(model: RegViT, images: Tensor, labels: Tensor | None, layer: int, factor: float = 10.0,
                     per_image: int = 2, seed: int = 0) -> tuple[Features, Features, Tensor]:
    """The same images through ``model`` as it is, and with outliers planted at ``layer``.

    ``per_image`` random patch positions per image (seeded) get the image's mean patch token at
    ``factor`` x the median norm (:func:`plant_outliers`). A *positive
    control*: it shows what every measurement reads when outliers are present; it is never the
    phenomenon itself.

    Returns:
        ``(natural, planted, positions)``, positions ``(B, per_image)``.
    """
    g = torch.Generator().manual_seed(seed)
    pos = torch.stack([torch.randperm(model.cfg.num_patches, generator=g)[:per_image] for _ in range(len(images))])
    natural = collect(model, images, labels)
    with plant_outliers(model, layer, pos, factor=factor):
        planted = collect(model, images, labels)
    return natural, planted, pos
