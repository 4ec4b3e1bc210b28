"""Every setting of a run on one page: :class:`ModelConfig` (and the named sizes of :func:`vit_config`),
the data sets (:class:`ScenesConfig`, :class:`FractalConfig`, :class:`ImageData`), the recipe
(:class:`TrainConfig`) and a whole run (:class:`RunConfig`: the key of a trained run in the cache).
The book's scales, built from them, are in :mod:`regvit_lib.profiles`.

Each is a frozen dataclass, so a config can be hashed, compared, printed and varied with
:func:`dataclasses.replace`, and each value is checked when the object is made: a bad value raises
:class:`ConfigError` naming the field and the value, before any compute starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["ConfigError", "ATTENTIONS", "Memory", "TokenLearner", "AViT", "Mamba", "Victor", "HMHSA", "Variant",
           "ModelConfig", "VIT_SIZES", "vit_config", "SHAPES", "BACKGROUNDS", "SPLITS",
           "ScenesConfig", "FractalConfig", "ImageData", "DataConfig", "DATA_CHOICES", "parse_data", "data_spec",
           "data_label", "same_data", "TrainConfig", "RunConfig"]

PoolKind = Literal["token", "avg"]
AttentionKind = Literal["softmax", "off_by_one", "kv_bias", "gated"]
ATTENTIONS: tuple[str, ...] = get_args(AttentionKind)
MlpKind = Literal["gelu", "swiglu"]
Split = Literal["train", "val", "test"]
Switch = Literal["auto", "on", "off"]
SPLITS: tuple[str, ...] = get_args(Split)
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
BACKGROUNDS = ("flat", "gradient", "noise", "texture")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


def _check_ints(obj: object, minimums: dict[str, int]) -> None:
    for name, minimum in minimums.items():
        _check_int(name, getattr(obj, name), minimum)


def _check_choice(name: str, value: object, kind: object) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def _check_range(name: str, value: object, lo: float, hi: float, hi_open: bool = True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (lo <= value < hi if hi_open else lo <= value <= hi):  # type: ignore[operator]
        span = f"a finite number >= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be {span}, got {value!r}")


# --- The methods chapter 5 compares with registers: each a variant of the ViT below (regvit_lib.variants). ---

@dataclass(frozen=True)
class Memory:
    """Memory tokens (Burtsev et al. 2020): the registers get a position embedding each and are kept at
    the output, where the head reads the mean of [CLS] and them -- what registers do *not* do."""

    kind: Literal["memory"] = "memory"

    def check(self, cfg: ModelConfig) -> None:
        if cfg.num_registers < 1:
            raise ConfigError("variant Memory needs num_registers >= 1 (the memory tokens)")


@dataclass(frozen=True)
class TokenLearner:
    """TokenLearner v1.1 (Ryoo et al. 2021): before block ``block``, ``tokens`` weighted sums of the
    patch tokens replace them; with ``fuser`` (TokenFuser) every later block maps them back onto the grid."""

    tokens: int = 8  # S, the learned tokens
    block: int = 3  # the module runs just before this block (blocks 0 .. block-1 see every patch)
    fuser: bool = False
    bottleneck: int = 64  # hidden width of the per-token MLP that makes the S maps
    kind: Literal["tokenlearner"] = "tokenlearner"

    def check(self, cfg: ModelConfig) -> None:
        _check_ints(self, {"tokens": 1, "block": 1, "bottleneck": 1})
        if self.tokens >= cfg.num_patches:
            raise ConfigError(f"TokenLearner tokens={self.tokens} must be fewer than the {cfg.num_patches} patches")
        if self.block >= cfg.depth:
            raise ConfigError(f"TokenLearner block={self.block} must lie inside the depth (1 .. {cfg.depth - 1})")
        if cfg.class_token or cfg.num_registers or cfg.global_pool != "avg":
            raise ConfigError("TokenLearner pools its tokens (global_pool='avg') and has no [CLS] or registers")


@dataclass(frozen=True)
class AViT:
    """A-ViT (Yin et al. 2022): after each block a token halts once the running sum of
    h = sigmoid(gate_scale * x[..., 0] - gate_center) passes 1 - eps; a ponder loss and a prior on
    the halting depth (a Gaussian at ``prior_depth`` blocks) are added to the training loss."""

    gate_scale: float = 10.0
    gate_center: float = 10.0  # A-ViT uses 30 / 75 on pretrained DeiT; our tokens are smaller
    eps: float = 0.01
    ponder: float = 5e-4  # weight of the mean ponder cost (blocks run + remainder)
    prior: float = 0.1  # weight of the KL to the halting-depth prior (A-ViT: 1e-3 at 12 blocks, ImageNet)
    prior_depth: float = 0.0  # mean of the prior, in blocks; 0 = two thirds of the depth
    kind: Literal["avit"] = "avit"

    def check(self, cfg: ModelConfig) -> None:
        for name in ("gate_scale", "gate_center", "ponder", "prior", "prior_depth"):
            _check_range(name, getattr(self, name), -math.inf if name == "gate_center" else 0.0, math.inf)
        _check_range("eps", self.eps, 0.0, 1.0)
        if self.prior_depth > cfg.depth:
            raise ConfigError(f"AViT prior_depth={self.prior_depth} is deeper than the model ({cfg.depth} blocks)")
        if not cfg.class_token or cfg.global_pool != "token":
            raise ConfigError("AViT classifies from [CLS] (class_token=True, global_pool='token')")

    def target_depth(self, depth: int) -> float:
        return self.prior_depth or 2 * depth / 3


@dataclass(frozen=True)
class Mamba:
    """Vision Mamba (Zhu et al. 2024): bidirectional selective-scan blocks instead of attention, [CLS] in
    the middle of the sequence. With registers and no [CLS] it is Mamba-R (Wang et al. 2025): the
    registers are spread evenly among the patches and the head reads all of them."""

    d_state: int = 16  # N, the state size per channel
    expand: int = 2  # E = expand * D inner channels
    d_conv: int = 4  # causal depthwise convolution before the scan
    kind: Literal["mamba"] = "mamba"

    def check(self, cfg: ModelConfig) -> None:
        _check_ints(self, {"d_state": 1, "expand": 1, "d_conv": 1})
        if cfg.attention != "softmax":
            raise ConfigError(f"Mamba has no attention to change (attention={cfg.attention!r})")
        if cfg.class_token == bool(cfg.num_registers):
            raise ConfigError("Mamba needs either a [CLS] token (Vim) or registers without one (Mamba-R), "
                              f"got class_token={cfg.class_token}, num_registers={cfg.num_registers}")
        if cfg.global_pool != ("token" if cfg.class_token else "avg"):
            raise ConfigError("Mamba's head reads [CLS] (global_pool='token') or, in Mamba-R, every register "
                              "(global_pool='avg' names it)")


@dataclass(frozen=True)
class Victor:
    """Victor-style summarisation (Wen et al. 2024), moved from a VLM to a ViT: the first ``block`` blocks
    see every token, then the patches are dropped and only [CLS] and the registers go on."""

    block: int = 2
    kind: Literal["victor"] = "victor"

    def check(self, cfg: ModelConfig) -> None:
        _check_int("block", self.block, 1)
        if self.block >= cfg.depth:
            raise ConfigError(f"Victor block={self.block} must lie inside the depth (1 .. {cfg.depth - 1})")
        if cfg.num_registers < 1 or not cfg.class_token or cfg.global_pool != "token":
            raise ConfigError("Victor needs registers to summarise into and a [CLS] token the head reads")


@dataclass(frozen=True)
class HMHSA:
    """H-MHSA (Liu et al., HAT-Net): attention inside ``window`` x ``window`` windows of the patch grid,
    then every token attends to the grid average-pooled by ``pool``. Patches only: no [CLS], mean pooling."""

    window: int = 4
    pool: int = 4
    kind: Literal["hmhsa"] = "hmhsa"

    def check(self, cfg: ModelConfig) -> None:
        _check_ints(self, {"window": 1, "pool": 1})
        for name, size in (("window", self.window), ("pool", self.pool)):
            if cfg.grid_size % size:
                raise ConfigError(f"H-MHSA {name}={size} does not divide the {cfg.grid_size}x{cfg.grid_size} patch grid")
        if cfg.class_token or cfg.num_registers or cfg.global_pool != "avg" or cfg.attention != "softmax":
            raise ConfigError("H-MHSA runs on the patch grid alone: no [CLS] or registers, global_pool='avg', "
                              "softmax attention")


Variant = Memory | TokenLearner | AViT | Mamba | Victor | HMHSA


@dataclass(frozen=True)
class ModelConfig:
    """A ViT with optional [CLS] and registers: tokens ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]``,
    position embeddings on the patches only (registers as placed by DINOv2)."""

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
    attention: AttentionKind = "softmax"  # or a head that can do nothing: see regvit_lib.model.Attention
    variant: Variant | None = None  # one of the compared methods above; None = the ViT itself

    def __post_init__(self) -> None:
        _check_ints(self, {"img_size": 1, "patch_size": 1, "in_chans": 1, "num_classes": 0, "embed_dim": 1,
                           "depth": 1, "num_heads": 1, "num_registers": 0})
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        _check_choice("mlp", self.mlp, MlpKind)
        _check_choice("global_pool", self.global_pool, PoolKind)
        if self.mlp == "swiglu" and self.mlp_hidden_dim % 2:
            raise ConfigError(f"mlp='swiglu' packs two halves: int(embed_dim * mlp_ratio)="
                              f"{self.mlp_hidden_dim} must be even")
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("global_pool='token' needs class_token=True (or use 'avg')")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ConfigError(f"layer_scale_init must be > 0 or None, got {self.layer_scale_init!r}")
        _check_range("drop_path_rate", self.drop_path_rate, 0.0, 1.0)
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        _check_choice("attention", self.attention, AttentionKind)
        if self.variant is not None:
            if not isinstance(self.variant, get_args(Variant)):
                raise ConfigError(f"variant must be one of {[v.__name__ for v in get_args(Variant)]} or None, "
                                  f"got {self.variant!r}")
            self.variant.check(self)

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
# name: (embed_dim, depth, num_heads, mlp_ratio, mlp); ViT-g's SwiGLU has 4096 hidden units, packed as 8192.
VIT_SIZES: dict[str, tuple[int, int, int, float, MlpKind]] = {
    "Ti": (192, 12, 3, 4.0, "gelu"), "S": (384, 12, 6, 4.0, "gelu"), "B": (768, 12, 12, 4.0, "gelu"),
    "L": (1024, 24, 16, 4.0, "gelu"), "g": (1536, 40, 24, 2.66667 * 2, "swiglu"),
}


def vit_config(size: str, **overrides: object) -> ModelConfig:
    """The :class:`ModelConfig` of a named ViT size (``Ti``, ``S``, ``B``, ``L``, ``g``).

    Defaults are ImageNet-like (224 px, patch 14, 1000 classes); ``overrides`` sets any other field.
    """
    if size not in VIT_SIZES:
        raise ConfigError(f"unknown ViT size {size!r}; known sizes: {sorted(VIT_SIZES)}")
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"unknown ModelConfig field(s) {sorted(unknown)}")
    dim, depth, heads, ratio, mlp = VIT_SIZES[size]
    kwargs: dict[str, Any] = dict(img_size=224, patch_size=14, num_classes=1000, embed_dim=dim, depth=depth,
                                  num_heads=heads, mlp_ratio=ratio, mlp=mlp)
    return ModelConfig(**{**kwargs, **overrides})


class _Splits:
    """Split sizes of a generated data set (``train_size``, ``val_size``, ``test_size``)."""

    def split_size(self, split: str) -> int:
        _check_choice("split", split, Split)
        return int(getattr(self, f"{split}_size"))


@dataclass(frozen=True)
class ScenesConfig(_Splits):
    """The procedural scenes (:mod:`regvit_lib.scenes`); two equal configs render identical images.

    The label is the number of objects (``task="count"``) or the most numerous shape (``"majority"``:
    it appears 2..``max_per_shape`` times, each other shape fewer).
    """

    img_size: int = 32
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")  # class i = shapes[i]
    task: Literal["count", "majority"] = "count"  # the class label: see above
    max_per_shape: int = 3
    backgrounds: tuple[str, ...] = BACKGROUNDS  # each image draws one kind uniformly
    object_size: tuple[float, float] = (0.45, 0.9)  # object radius, as a fraction of half a cell
    object_texture: float = 0.0  # probability that an object is striped
    train_size: int = 50_000
    val_size: int = 2_000
    test_size: int = 2_000
    seed: int = 0  # identity of the data set (independent of the training seed)
    kind: Literal["scenes"] = "scenes"

    def __post_init__(self) -> None:
        _check_ints(self, {"img_size": 8, "max_per_shape": 2, "seed": 0, "train_size": 1, "val_size": 1,
                           "test_size": 1})
        for name, values, known in (("shapes", self.shapes, SHAPES), ("backgrounds", self.backgrounds, BACKGROUNDS)):
            if not isinstance(values, tuple) or not values or len(set(values)) != len(values) \
                    or any(v not in known for v in values):
                raise ConfigError(f"{name} must be distinct values from {known} in a non-empty tuple, got {values!r}")
        if len(self.shapes) < 2:
            raise ConfigError(f"the majority task needs >= 2 shapes, got {self.shapes!r}")
        lo, hi = self.object_size
        if not 0.1 <= lo <= hi <= 1.0:
            raise ConfigError(f"object_size must satisfy 0.1 <= lo <= hi <= 1, got {self.object_size!r}")
        _check_range("object_texture", self.object_texture, 0.0, 1.0, hi_open=False)
        _check_choice("kind", self.kind, Literal["scenes"])
        _check_choice("task", self.task, Literal["count", "majority"])
        if self.cell_size < 5:
            raise ConfigError(f"img_size={self.img_size} leaves {self.cell_size:.1f}-pixel grid cells for "
                              f"{self.max_objects} objects; use a larger image or fewer objects (>= 5 px per cell)")

    @property
    def num_classes(self) -> int:
        return len(self.shapes) if self.task == "majority" else self.max_objects

    @property
    def max_objects(self) -> int:
        return self.max_per_shape + (len(self.shapes) - 1) * (self.max_per_shape - 1)

    @property
    def grid(self) -> int:
        """Cells per side of the object grid."""
        return math.ceil(math.sqrt(self.max_objects))

    @property
    def cell_size(self) -> float:
        return self.img_size / self.grid


@dataclass(frozen=True)
class FractalConfig(_Splits):
    """FractalDB-style fractals on black (Kataoka et al. 2020; :mod:`regvit_lib.data`): a class is a random
    system of ``maps`` contractive affine maps; an image, ``points`` points of its jittered attractor."""

    img_size: int = 32
    num_classes: int = 10
    maps: int = 3  # affine maps per IFS
    points: int = 600  # attractor points drawn per image
    jitter: float = 0.05  # per-image relative perturbation of the IFS coefficients
    train_size: int = 50_000
    val_size: int = 2_000
    test_size: int = 2_000
    seed: int = 0
    kind: Literal["fractals"] = "fractals"

    def __post_init__(self) -> None:
        _check_ints(self, {"img_size": 8, "num_classes": 2, "maps": 2, "points": 16, "seed": 0, "train_size": 1,
                           "val_size": 1, "test_size": 1})
        _check_range("jitter", self.jitter, 0.0, 0.5)
        _check_choice("kind", self.kind, Literal["fractals"])


RealName = Literal["cifar10", "stl10", "imagenette", "folder"]
_REAL_VAL_SIZE = 1_000  # the most held-out images a real set gives up (CIFAR-10, STL-10: from its training images)


@dataclass(frozen=True)
class ImageData:
    """A real image set through torchvision (:mod:`regvit_lib.data`): ``folder`` reads
    ``root/<split>/<class>/<image>``; the others download into ``root`` when ``download`` is true."""

    name: RealName = "folder"
    root: str = "data/images"
    img_size: int = 32
    val_size: int = _REAL_VAL_SIZE  # CIFAR-10 / STL-10: the last val_size training images
    download: bool = False
    kind: Literal["images"] = "images"

    def __post_init__(self) -> None:
        _check_choice("name", self.name, RealName)
        _check_ints(self, {"img_size": 8, "val_size": 0})
        _check_choice("kind", self.kind, Literal["images"])


DataConfig = ScenesConfig | FractalConfig | ImageData

DATA_CHOICES = ("scenes", "fractals", *(f"{name}:DIR" for name in get_args(RealName)))


def parse_data(spec: str, like: ScenesConfig) -> DataConfig:
    """A data option as a reader types it (a chapter's ``data`` parameter, ``--data``, ``$REGVIT_DATA``).

    Args:
        spec: ``"scenes"`` (``like`` itself), ``"fractals"``, or ``"NAME:DIR"`` with NAME one of
            ``cifar10``, ``stl10``, ``imagenette`` (downloaded into DIR by
            ``python -m regvit_lib.data fetch NAME --root DIR``) or ``folder`` (DIR holds
            ``train/<class>/<image>`` and ``val/<class>/<image>``).
        like: the profile's scenes, whose image size and split sizes the other sets take.

    Raises:
        ConfigError: naming the value and the accepted forms.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"data must be a string, one of {list(DATA_CHOICES)}; got {spec!r}")
    name, sep, root = spec.strip().partition(":")
    if spec.strip() == "scenes":
        return like
    if spec.strip() == "fractals":
        return FractalConfig(img_size=like.img_size, train_size=like.train_size, val_size=like.val_size,
                             test_size=like.test_size)
    if not sep or name not in get_args(RealName) or not root.strip():
        raise ConfigError(f"data={spec!r} is not one of {list(DATA_CHOICES)} (DIR: the folder that holds the images)")
    # the folder as an absolute path: a chapter runs in chapters/, a command in the checkout, one key for both;
    # held-out images capped at the set's default, so STL-10's 5,000 training images keep most of theirs
    return ImageData(name=name, root=str(Path(root.strip()).expanduser().resolve()),  # type: ignore[arg-type]
                     img_size=like.img_size, val_size=min(like.val_size, _REAL_VAL_SIZE))


def same_data(a: str, b: str) -> bool:
    """Whether two data options (:func:`parse_data`'s specs) name the same images: the same named set
    wherever it was downloaded (``cifar10:/data`` and ``cifar10:/content/data``), but a ``folder`` only
    at the same place."""
    (na, _, ra), (nb, _, rb) = (s.strip().partition(":") for s in (a, b))
    if na != nb:
        return False
    return na != "folder" or Path(ra.strip()).expanduser().resolve() == Path(rb.strip()).expanduser().resolve()


def data_spec(data: DataConfig) -> str:
    """The spec :func:`parse_data` reads back to ``data`` (scenes: ``"scenes"`` whatever their settings)."""
    return f"{data.name}:{data.root}" if isinstance(data, ImageData) else data.kind


def data_label(data: DataConfig) -> str:
    """A short name of the data set: ``scenes``, ``fractals``, ``cifar10``, ``folder`` ..."""
    return data.name if isinstance(data, ImageData) else data.kind


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: optimiser, schedule, regularisation, and how often to evaluate/checkpoint."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate, after warm-up
    min_lr: float = 1e-5  # end of the cosine
    warmup_steps: int = 30
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    objective: Literal["supervised", "dino"] = "supervised"  # "dino": self-distillation, no labels
    loss: Literal["ce", "bce"] = "ce"  # "bce": DeiT-III's binary cross-entropy on (mixed) targets
    label_smoothing: float = 0.0
    hflip: bool = True  # random horizontal flips (labels of scenes are flip-invariant)
    mixup: float = 0.0  # Beta(a, a) Mixup; 0 = off (DeiT-III: 0.8)
    cutmix: float = 0.0  # Beta(a, a) CutMix; 0 = off (DeiT-III: 1.0). With both on, one per batch
    eval_every: int = 50  # evaluate (and record norm/sink curves) every this many steps
    eval_images: int = 512  # validation images per evaluation (the final one uses the whole split)
    stats_images: int = 64  # images whose every token norm and attention map are summarised
    checkpoint_every: int = 100  # steps between checkpoints (resume points)
    dino_dim: int = 256  # DINO: number of prototypes of the head
    dino_momentum: float = 0.99  # DINO: teacher EMA momentum at the start, cosine to 1 (DINO: 0.996 over
    # hundreds of epochs; with a few hundred steps 0.996 leaves the teacher near its random init)
    knn_images: int = 2_048  # DINO: labelled training images in the k-NN evaluation's bank
    amp: Switch = "auto"  # 16-bit autocast, "auto" = on CUDA only: bf16, or fp16 + scaler (train.precision)
    compile: Switch = "auto"  # torch.compile: "auto" = on CUDA only
    cpu_threads: int = 1  # torch threads a run trains with on a CPU: part of the recipe, as the order of the
    # float sums, and so the trained weights, change with it (1: prepare trains one run per core)

    def __post_init__(self) -> None:
        _check_ints(self, {"steps": 1, "batch_size": 1, "warmup_steps": 0, "eval_every": 1, "eval_images": 1,
                           "stats_images": 1, "checkpoint_every": 1, "dino_dim": 2, "knn_images": 1,
                           "cpu_threads": 1})
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "mixup", "cutmix"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        if not self.lr > 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 < min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        _check_choice("loss", self.loss, Literal["ce", "bce"])
        _check_choice("objective", self.objective, Literal["supervised", "dino"])
        _check_range("dino_momentum", self.dino_momentum, 0.0, 1.0)
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"Mixup/CutMix pair up images: batch_size must be even, got {self.batch_size}")
        if self.objective == "dino" and (self.mixup or self.cutmix or self.label_smoothing or self.loss != "ce"):
            raise ConfigError("objective='dino' uses no labels: mixup, cutmix, label_smoothing and loss do not apply")
        _check_choice("amp", self.amp, Switch)
        _check_choice("compile", self.compile, Switch)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a trained model: architecture, data, recipe, seed (the cache key)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=ScenesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        if self.model.img_size != self.data.img_size:
            raise ConfigError(f"model img_size={self.model.img_size} but data img_size={self.data.img_size}")
        if (isinstance(self.data, (ScenesConfig, FractalConfig)) and self.train.objective == "supervised"
                and self.model.num_classes != self.data.num_classes):
            raise ConfigError(f"model num_classes={self.model.num_classes} but the {self.data.kind} have "
                              f"{self.data.num_classes} classes")
        if self.train.objective == "dino" and self.model.num_classes != 0:
            raise ConfigError(f"objective='dino' trains no classifier: set num_classes=0, got {self.model.num_classes}")
        if self.train.objective == "supervised" and self.model.num_classes == 0:
            raise ConfigError("supervised training needs num_classes >= 1")
