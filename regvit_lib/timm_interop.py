"""Move weights between :class:`~regvit_lib.model.RegViT` and timm's ``VisionTransformer``.

This is what lets the book's analysis run on pretrained DINOv2 / DeiT-III checkpoints: load
them with timm, convert, and study them with the same code as our own small models.

Parameter names are the same in both models. The one real difference is where position
embeddings go. In timm, ``no_embed_class=False`` gives [CLS] (and registers, if any) a
position embedding of their own; in our model prefix tokens never have one. A prefix token
is the same learnable vector for every image, so ``token + pos`` is just another learnable
vector: :func:`timm_to_regvit_state_dict` folds that position into the token, which is exact.
"""

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig
from .model import RegViT, build_model

if TYPE_CHECKING:  # timm is imported lazily, after the torchvision shim has run
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["TimmConversionError", "config_from_timm", "timm_to_regvit_state_dict", "regvit_from_timm", "timm_kwargs",
           "regvit_to_timm"]


class TimmConversionError(ValueError):
    """The timm model uses a feature that :class:`RegViT` does not implement."""


def _unsupported(model: Any) -> list[str]:
    """Names of timm features, switched on in ``model``, that our ViT does not have."""
    from timm.layers import GluMlp, Mlp

    blk, mlp = model.blocks[0], model.blocks[0].mlp
    checks = {
        "fc_norm (norm after pooling)": not isinstance(model.fc_norm, nn.Identity),
        "norm_pre": not isinstance(model.norm_pre, nn.Identity),
        "patch_embed.norm": not isinstance(model.patch_embed.norm, nn.Identity),
        "attention pooling": getattr(model, "attn_pool", None) is not None,
        "no position embedding": model.pos_embed is None,
        "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
        f"global_pool={model.global_pool!r}": model.global_pool not in ("token", "avg"),
        "q/k norm": not isinstance(blk.attn.q_norm, nn.Identity),
        "attention proj without bias": blk.attn.proj.bias is None,
    }
    if isinstance(mlp, GluMlp):
        checks["GLU MLP other than packed SwiGLU"] = mlp.gate_last or not isinstance(mlp.act, nn.SiLU)
    elif isinstance(mlp, Mlp):
        checks["MLP activation other than GELU"] = not isinstance(mlp.act, nn.GELU)
        checks["MLP norm"] = not isinstance(mlp.norm, nn.Identity)
    else:
        checks[f"MLP type {type(mlp).__name__}"] = True
    return [name for name, on in checks.items() if on]


def config_from_timm(model: Any) -> ModelConfig:
    """The :class:`ModelConfig` of an existing timm ``VisionTransformer``.

    ``layer_scale_init`` is recorded as 1e-5 when the model has LayerScale: only its
    presence matters for a model whose weights are then loaded.

    Args:
        model: a timm ``VisionTransformer`` (typed loosely: timm's attributes are dynamic).

    Raises:
        TimmConversionError: listing every feature of ``model`` our ViT does not implement.
    """
    from timm.layers import GluMlp, LayerScale

    if bad := _unsupported(model):
        raise TimmConversionError(f"cannot convert this timm model; unsupported: {', '.join(bad)}")
    blk = model.blocks[0]
    img, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    if img[0] != img[1] or patch[0] != patch[1]:
        raise TimmConversionError(f"only square images and patches: img_size={img}, patch_size={patch}")
    dim = model.embed_dim
    try:
        return ModelConfig(
            img_size=img[0], patch_size=patch[0], in_chans=model.patch_embed.proj.in_channels,
            num_classes=model.num_classes, embed_dim=dim, depth=len(model.blocks), num_heads=blk.attn.num_heads,
            mlp_ratio=blk.mlp.fc1.out_features / dim, mlp="swiglu" if isinstance(blk.mlp, GluMlp) else "gelu",
            qkv_bias=blk.attn.qkv.bias is not None, class_token=model.cls_token is not None,
            num_registers=int(getattr(model, "num_reg_tokens", 0)), global_pool=model.global_pool,
            layer_scale_init=1e-5 if isinstance(blk.ls1, LayerScale) else None, norm_eps=float(model.norm.eps))
    except ConfigError as err:
        raise TimmConversionError(f"timm model does not fit a ModelConfig: {err}") from err


def timm_to_regvit_state_dict(state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Turn a timm ViT state dict into one for :class:`RegViT` with config ``cfg``.

    A pure function (the input is not modified), like timm's ``checkpoint_filter_fn``. If
    ``pos_embed`` has entries for the prefix tokens (timm ``no_embed_class=False``), they
    are added to ``cls_token`` / ``reg_token`` and dropped from ``pos_embed``.

    Raises:
        TimmConversionError: when ``pos_embed`` fits neither layout.
    """
    sd = dict(state_dict)
    pos = sd["pos_embed"]  # (1, [prefix +] N, D)
    extra = pos.shape[1] - cfg.num_patches
    if extra == 0:
        return sd
    if extra != cfg.num_prefix_tokens:
        raise TimmConversionError(f"pos_embed has {pos.shape[1]} positions; expected {cfg.num_patches} patches "
                                  f"(+ {cfg.num_prefix_tokens} prefix tokens)")
    if cfg.class_token:
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
    if cfg.num_registers:  # the positions after [CLS]'s, up to the patches'
        sd["reg_token"] = sd["reg_token"] + pos[:, int(cfg.class_token) : extra]
    sd["pos_embed"] = pos[:, extra:].clone()
    return sd


def regvit_from_timm(model: "VisionTransformer") -> RegViT:
    """A :class:`RegViT` computing the same function as the timm ``model``.

    The new model is on the same device and dtype as ``model``, in eval mode.
    """
    cfg = config_from_timm(model)
    ref = next(model.parameters())
    ours = build_model(cfg, device="meta").to_empty(device=ref.device).to(ref.dtype)
    assert isinstance(ours, RegViT)
    ours.load_state_dict(timm_to_regvit_state_dict(model.state_dict(), cfg), strict=True)
    return ours.eval()


def timm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for timm's ``VisionTransformer`` that build our architecture."""
    from timm.layers import LayerNorm, SwiGLUPacked

    swiglu = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU} if cfg.mlp == "swiglu" else {}
    return dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token, reg_tokens=cfg.num_registers, no_embed_class=True,
        global_pool=cfg.global_pool, fc_norm=False, init_values=cfg.layer_scale_init,
        drop_path_rate=cfg.drop_path_rate, norm_layer=partial(LayerNorm, eps=cfg.norm_eps), **swiglu)


def regvit_to_timm(model: RegViT) -> "VisionTransformer":
    """A timm ``VisionTransformer`` holding ``model``'s weights (same function), in eval mode."""
    from timm.models.vision_transformer import VisionTransformer

    ref = next(model.parameters())
    with torch.device("meta"):
        tm = VisionTransformer(**timm_kwargs(model.cfg))
    tm = tm.to_empty(device=ref.device).to(ref.dtype)
    tm.load_state_dict(model.state_dict(), strict=True)
    return tm.eval()
