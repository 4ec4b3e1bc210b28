"""The data sources behind one interface: scenes, fractals, real image sets, and photographs.

The training loop and the probes read images through :class:`DataSource` (:func:`make_source`):
sizes, classes and batches of any split. Behind it:

* the procedural scenes of :mod:`regvit_lib.scenes` (the default);
* FractalDB-style fractals (:func:`render_fractals`): almost all of the canvas exactly black,
  the most redundant background there is; like the scenes, an image is a pure function of
  (seed, split, index);
* real image sets through torchvision (CIFAR-10, STL-10, Imagenette, or a folder
  ``root/<split>/<class>/<image>``), class labels only.

Also here: :func:`batch_indices` (which images a training step reads), :func:`normalize` (the
model's input), and real photographs for the figures (:func:`sample_photo`, :func:`photos`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from .config import ConfigError, DataConfig, FractalConfig, ImageData, ScenesConfig, _check_choice, Split
from .scenes import _checked_indices, _Draws, _uniforms, render_scenes

__all__ = ["render_fractals", "DataSource", "make_source", "batch_indices", "normalize", "IMAGENET_MEAN",
           "IMAGENET_STD", "sample_photo", "photos", "PHOTOS", "FETCHABLE", "fetch", "fetch_command", "main",
           "LabelledBatch", "labelled"]

def _ifs(cfg: FractalConfig, labels: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the (jittered) maps of its class: ``A`` (B, M, 2, 2), ``b`` (B, M, 2)."""
    M = cfg.maps
    # The class's IFS: a hash of (seed, class) only, shared by all splits ("test" keys ignored).
    u = _uniforms(cfg.seed + 7_919, "test", np.arange(cfg.num_classes), 6 * M).reshape(cfg.num_classes, M, 6)
    A = (2 * u[..., :4] - 1).reshape(cfg.num_classes, M, 2, 2)
    # Contractive: scale each map to a spectral norm in [0.3, 0.8].
    norm = np.linalg.norm(A, ord=2, axis=(2, 3))[..., None, None]
    A = A / norm * (0.3 + 0.5 * u[..., 4:5, None])
    b = 2 * u[..., 4:6] - 1
    A = A[labels] * (1 + cfg.jitter * (2 * jitter[:, : 4 * M].reshape(-1, M, 2, 2) - 1))
    b = b[labels] * (1 + cfg.jitter * (2 * jitter[:, 4 * M : 6 * M].reshape(-1, M, 2) - 1))
    return A, b


def render_fractals(cfg: FractalConfig, split: str, indices: Sequence[int] | np.ndarray | Tensor,
                    device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Images ``(B, 3, H, W)`` in [0, 1] and class labels ``(B,)`` of fractal images."""
    idx = _checked_indices(cfg, split, indices, "fractal")
    B, M, Pn, H = idx.size, cfg.maps, cfg.points, cfg.img_size
    d = _Draws(_uniforms(cfg.seed, split, idx, 1 + 6 * M + 3 + 2 * Pn + 12 * Pn))
    labels = np.minimum((d.take() * cfg.num_classes).astype(np.int64), cfg.num_classes - 1)
    A, b = _ifs(cfg, labels, d.take(6 * M).reshape(B, 6 * M))
    colour = 0.5 + 0.5 * d.take(3).reshape(B, 3)
    dev = torch.device(device)
    At, bt = torch.as_tensor(A, dtype=torch.float32, device=dev), torch.as_tensor(b, dtype=torch.float32, device=dev)
    p = torch.as_tensor(2 * d.take(2 * Pn).reshape(B, Pn, 2) - 1, dtype=torch.float32, device=dev)
    choice = torch.as_tensor(np.minimum((d.take(12 * Pn).reshape(B, 12, Pn) * M).astype(np.int64), M - 1), device=dev)
    rows = torch.arange(B, device=dev)[:, None]
    for t in range(12):  # the chaos game, one step for every chain at once
        m = choice[:, t]  # (B, Pn)
        p = (At[rows, m] @ p[..., None])[..., 0] + bt[rows, m]
    lo, hi = p.amin(1, keepdim=True), p.amax(1, keepdim=True)
    scale = (hi - lo).amax(-1, keepdim=True).clamp_min(1e-6)
    p = (p - lo - (hi - lo - scale) / 2) / scale  # fit the longer side into [0, 1]
    xy = (p * (H - 2) + 1).round().long().clamp(0, H - 1)  # one-pixel margin
    canvas = torch.zeros(B, H * H, device=dev)
    canvas.scatter_(1, xy[..., 1] * H + xy[..., 0], 1.0)
    image = canvas.reshape(B, 1, H, H) * torch.as_tensor(colour, dtype=torch.float32, device=dev)[:, :, None, None]
    return image, torch.as_tensor(labels, device=dev)


class DataSource:
    """The one interface the training loop and the probes use: sizes, classes, batches."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """Images ``(B, 3, H, W)`` in [0, 1] and labels ``(B,)`` for these indices of ``split``."""
        raise NotImplementedError


class _GeneratedSource(DataSource):
    """A data set rendered by code (scenes or fractals): images and labels from a render function."""

    cfg: ScenesConfig | FractalConfig

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def split_size(self, split: str) -> int:
        return self.cfg.split_size(split)

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        if isinstance(self.cfg, ScenesConfig):
            out = render_scenes(self.cfg, split, indices, device)
            return out.image, out.label
        return render_fractals(self.cfg, split, indices, device)


class _ImageSource(DataSource):
    cfg: ImageData

    def __init__(self, cfg: ImageData) -> None:
        super().__init__(cfg)
        self._splits: dict[str, Any] = {}  # split -> torchvision data set (or a Subset of one)

    def _load(self, split: str) -> Any:
        _check_choice("split", split, Split)
        if not self._splits:
            self._splits = self._open()
        return self._splits[split]

    def _open(self) -> dict[str, Any]:
        from torch.utils.data import Subset
        from torchvision import datasets, transforms  # regvit_lib/_compat.py has run: importable on CPU torch

        c, root = self.cfg, Path(self.cfg.root).expanduser()
        tf = transforms.Compose([transforms.Resize(c.img_size, antialias=True), transforms.CenterCrop(c.img_size),
                                 transforms.ToTensor()])
        try:
            if c.name == "folder":
                for split in ("train", "val"):
                    if not (root / split).is_dir():
                        raise FileNotFoundError(f"image folder {root / split} does not exist: an image folder holds "
                                                f"{root}/train/<class>/<image> and {root}/val/<class>/<image> "
                                                "(and optionally test/); or fetch a ready one: "
                                                f"{fetch_command('imagenette', root)}")
                train, val = (datasets.ImageFolder(str(root / s), transform=tf) for s in ("train", "val"))
                test = datasets.ImageFolder(str(root / "test"), transform=tf) if (root / "test").is_dir() else val
            elif c.name == "imagenette":
                train, val = (datasets.Imagenette(str(root), split=s, size="160px", download=c.download, transform=tf)
                              for s in ("train", "val"))
                test = val
            else:  # CIFAR-10, STL-10: validation is the end of the training set
                def get(split: str) -> Any:
                    if c.name == "cifar10":
                        return datasets.CIFAR10(str(root), train=split == "train", download=c.download, transform=tf)
                    return datasets.STL10(str(root), split=split, download=c.download, transform=tf)
                full, test = get("train"), get("test")
                n = len(full) - c.val_size
                if n < 1:
                    raise ConfigError(f"val_size={c.val_size} leaves no training images of {len(full)}")
                train, val = Subset(full, range(n)), Subset(full, range(n, len(full)))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
            raise FileNotFoundError(
                f"{c.name} is not in {root} ({e}); fetch it on a machine with a network: "
                f"{fetch_command(c.name, root)} (or pass download=True)"
            ) from e
        return {"train": train, "val": val, "test": test}

    @property
    def num_classes(self) -> int:
        train = self._load("train")
        return len(getattr(train, "dataset", train).classes)

    def split_size(self, split: str) -> int:
        return len(self._load(split))

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        ds = self._load(split)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= len(ds))]
        if bad.size:
            raise IndexError(f"image index {bad[0]} is outside the {split!r} split of size {len(ds)}")
        items = [ds[int(i)] for i in idx]
        return (torch.stack([x for x, _ in items]).to(device),
                torch.tensor([y for _, y in items], dtype=torch.int64, device=device))


FETCHABLE = ("cifar10", "stl10", "imagenette")


def fetch_command(name: str, root: Path | str) -> str:
    """The command that downloads the image set ``name`` into ``root`` (:func:`fetch`)."""
    return f"python -m regvit_lib.data fetch {name} --root {root}"


def fetch(name: str, root: Path | str) -> int:
    """Download the image set ``name`` (CIFAR-10, STL-10 or Imagenette at 160 px) into ``root``
    through torchvision (needs a network); returns its number of training images.

    Raises:
        ConfigError: ``name`` is not one that can be downloaded (an image folder is the reader's own).
    """
    if name not in FETCHABLE:
        raise ConfigError(f"cannot fetch {name!r}: one of {list(FETCHABLE)} (an image folder is your own images)")
    data = ImageData(name=name, root=str(root), download=True)  # type: ignore[arg-type]  # checked above
    return make_source(data).split_size("train")


@lru_cache(maxsize=8)
def make_source(cfg: DataConfig) -> DataSource:
    """The :class:`DataSource` of a data config (scenes, fractals or real images); one per config and
    process, so a set of real images is opened once however many chapters read it."""
    if isinstance(cfg, (ScenesConfig, FractalConfig)):
        return _GeneratedSource(cfg)
    if isinstance(cfg, ImageData):
        return _ImageSource(cfg)
    raise ConfigError(f"unknown data config {cfg!r}")


@dataclass(frozen=True)
class LabelledBatch:
    """Images with every label their data set has: what the chapters measure and probe on.

    ``image`` and ``label`` always; the rest only where the set has them, else ``None``:
    ``foreground`` (``(B, H, W)``, 0 off the objects: scenes and fractals), ``seg`` and ``depth``
    (``(B, H, W)``: the scenes' segmentation, 0 background and 1 + shape index, and depth),
    ``boxes`` / ``box_valid`` (``(B, K, 4)`` / ``(B, K)``: the scenes' objects). Real photographs
    have class labels only, so a probe that needs the others reports "no labels".
    """

    image: Tensor  # (B, 3, H, W) in [0, 1]
    label: Tensor  # (B,) int64
    foreground: Tensor | None = None
    seg: Tensor | None = None
    depth: Tensor | None = None
    boxes: Tensor | None = None
    box_valid: Tensor | None = None
    seg_classes: int = 0  # segmentation classes, background included (0 without ``seg``)

    def __len__(self) -> int:
        return len(self.image)


def labelled(cfg: DataConfig, split: str, indices: Sequence[int] | np.ndarray) -> LabelledBatch:
    """The images ``indices`` of ``split`` with every label the data set has (:class:`LabelledBatch`)."""
    if isinstance(cfg, ScenesConfig):
        sc = render_scenes(cfg, split, indices)
        return LabelledBatch(sc.image, sc.label, sc.seg, sc.seg, sc.depth, sc.boxes, sc.box_valid, 1 + len(cfg.shapes))
    image, label = make_source(cfg).batch(split, np.asarray(indices))
    if isinstance(cfg, FractalConfig):  # the drawn pixels are the object; the rest is exactly black
        return LabelledBatch(image, label, foreground=(image.amax(1) > 0).long())
    return LabelledBatch(image, label)


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The indices of training batch ``step``: epochs of seeded permutations, read in order.

    A pure function of its arguments, so a resumed run reads exactly the batches an
    uninterrupted one would have.
    """
    pos = step * batch_size + np.arange(batch_size)
    epoch, within = pos // n, pos % n
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = _permutation(n, seed, int(e))[within[sel]]
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: Tensor) -> Tensor:
    """Images in [0, 1] to the model's input: ImageNet mean/std per channel, as timm and DINOv2."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std



def sample_photo(img_size: int, name: str = "grace_hopper.jpg") -> Tensor:
    """A photograph from matplotlib's sample data, as a float image in [0, 1].

    Args:
        img_size: output side in pixels (centre square crop, then antialiased resize).
        name: a file in matplotlib's ``sample_data`` folder.

    Returns:
        Tensor of shape ``(1, 3, img_size, img_size)``.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size!r}")
    path = files("matplotlib") / "mpl-data" / "sample_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"no sample image {name!r} in matplotlib's sample_data ({path})")
    with Image.open(str(path)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s].unsqueeze(0)  # (1, 3, s, s)
    out = F.interpolate(img, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)

# scikit-image's colour photographs that ship inside its wheel (no download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos(img_size: int, names: tuple[str, ...] = PHOTOS) -> Tensor:
    """Real photographs, centre-cropped square and resized: ``(B, 3, img_size, img_size)`` in [0, 1].

    scikit-image's packaged sample images when scikit-image is installed, else the one photograph
    matplotlib ships (:func:`sample_photo`).
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"img_size must be a positive int, got {img_size!r}")
    try:
        import skimage.data
    except ImportError:
        return sample_photo(img_size)
    out = []
    for n in names:
        im = Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
        im = ImageOps.fit(im, (img_size, img_size), method=Image.Resampling.LANCZOS)  # centre square, resized
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m regvit_lib.data fetch NAME --root DIR``: download an image set (:func:`fetch`)."""
    import argparse

    ap = argparse.ArgumentParser(description="Download a real image set for ImageData(name=..., root=...).")
    ap.add_argument("command", choices=["fetch"])
    ap.add_argument("name", choices=list(FETCHABLE))
    ap.add_argument("--root", default=ImageData().root, help="the folder to download into (default: %(default)s)")
    args = ap.parse_args(argv)
    print(f"{args.name}: {fetch(args.name, args.root)} training images in {args.root}")


if __name__ == "__main__":
    main()
