"""Images for the book.

For now: a real photograph that ships with matplotlib, so chapter 1 can walk a real image
through the model with no download.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["sample_photo"]


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
