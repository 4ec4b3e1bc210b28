"""Configuration: the model config and the named ViT sizes.

Everything that decides a computation lives in a frozen dataclass, so a config can be
hashed, compared, printed and varied with :func:`dataclasses.replace`. Every value is
checked when the object is made ("validated at the door"): a bad value raises
:class:`ConfigError` naming the field and the value, before any compute starts. The data
config lives in :mod:`regvit_lib.data`, the recipe in :mod:`regvit_lib.train`, and the book's
profiles, which put the three together, in :mod:`regvit_lib.profiles`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

__all__ = ["ConfigError", "ModelConfig", "VIT_SIZES", "vit_config"]

PoolKind = Literal["token", "avg"]
MlpKind = Literal["gelu", "swiglu"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check_int(name: str, value: object, minimum: int) -> None:
    # bool is a subclass of int; a flag passed where a count belongs is a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


def _check_choice(name: str, value: object, kind: object) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a ViT with optional [CLS] and register tokens.

    The token sequence is ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]``. Only patch tokens
    get a (learnable) position embedding; [CLS] and registers are position-free learnable
    tokens, the DINOv2 placement. The names follow timm's ``VisionTransformer`` arguments.
    """

    img_size: int = 32  # side of the (square) input image, pixels
    patch_size: int = 4  # side of a square patch; must divide img_size
    in_chans: int = 3
    num_classes: int = 10  # 0: no classification head (features only)
    embed_dim: int = 64  # token width D
    depth: int = 4  # number of transformer blocks
    num_heads: int = 4  # attention heads; must divide embed_dim
    mlp_ratio: float = 4.0  # MLP hidden width = int(embed_dim * mlp_ratio), as timm
    mlp: MlpKind = "gelu"  # "swiglu": DINOv2-g's packed SwiGLU (timm SwiGLUPacked)
    qkv_bias: bool = True
    class_token: bool = True
    num_registers: int = 0  # extra learnable tokens, discarded at the output
    global_pool: PoolKind = "token"  # head reads [CLS] ("token") or mean of patches ("avg")
    layer_scale_init: float | None = None  # LayerScale gamma init (DeiT-III 1e-4, DINOv2 1e-5)
    drop_path_rate: float = 0.0  # stochastic depth, same rate in every block (DeiT-III)
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name, minimum in (
            ("img_size", 1),
            ("patch_size", 1),
            ("in_chans", 1),
            ("num_classes", 0),
            ("embed_dim", 1),
            ("depth", 1),
            ("num_heads", 1),
            ("num_registers", 0),
        ):
            _check_int(name, getattr(self, name), minimum)
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        _check_choice("mlp", self.mlp, MlpKind)
        _check_choice("global_pool", self.global_pool, PoolKind)
        if self.mlp == "swiglu" and self.mlp_hidden_dim % 2:
            raise ConfigError(
                f"mlp='swiglu' packs two halves: int(embed_dim * mlp_ratio)="
                f"{self.mlp_hidden_dim} must be even"
            )
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("global_pool='token' needs class_token=True (or use 'avg')")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ConfigError(f"layer_scale_init must be > 0 or None, got {self.layer_scale_init!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """[CLS] (if any) plus registers: the tokens in front of the patches."""
        return int(self.class_token) + self.num_registers

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


# Named widths of the ViT family (Dosovitskiy et al. 2021; g as in DINOv2, Oquab et al. 2023).
# name: (embed_dim, depth, num_heads, mlp_ratio, mlp)
VIT_SIZES: dict[str, tuple[int, int, int, float, MlpKind]] = {
    "Ti": (192, 12, 3, 4.0, "gelu"),
    "S": (384, 12, 6, 4.0, "gelu"),
    "B": (768, 12, 12, 4.0, "gelu"),
    "L": (1024, 24, 16, 4.0, "gelu"),
    # DINOv2 ViT-g/14: SwiGLU with 4096 hidden units, stored packed as 8192 (timm's ratio).
    "g": (1536, 40, 24, 2.66667 * 2, "swiglu"),
}


def vit_config(size: str, **overrides: object) -> ModelConfig:
    """The :class:`ModelConfig` of a named ViT size (``Ti``, ``S``, ``B``, ``L``, ``g``).

    Args:
        size: one of :data:`VIT_SIZES`.
        **overrides: any other :class:`ModelConfig` field (``img_size``, ``num_registers``...).
            Defaults here are ImageNet-like: 224 px, patch 14, 1000 classes.

    Returns:
        The validated config.
    """
    if size not in VIT_SIZES:
        raise ConfigError(f"unknown ViT size {size!r}; known sizes: {sorted(VIT_SIZES)}")
    dim, depth, heads, ratio, mlp = VIT_SIZES[size]
    kwargs: dict[str, object] = dict(
        img_size=224, patch_size=14, num_classes=1000,
        embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, mlp=mlp,
    )
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown ModelConfig field(s) {sorted(unknown)}")
    kwargs.update(overrides)
    return ModelConfig(**kwargs)  # type: ignore[arg-type]
