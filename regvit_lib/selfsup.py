"""A small DINO: self-distillation with no labels (Caron et al. 2021), the objective of DINOv2.

The paper's strongest artifacts are in DINOv2, trained without labels; our other models are
supervised. This module gives the emergence study the other side of that axis, small enough
to hold in one's head:

* two random **views** of each image (a random square crop of 40-100 % of the area resized
  back, a flip, brightness/contrast jitter, sometimes grey);
* a **student** (the model being trained) and a **teacher** that is an exponential moving
  average of the student (momentum from ``momentum`` up to 1 on a cosine);
* a **head** on the pooled token of each: a 3-layer MLP, L2-normalisation, and a linear layer
  with unit-norm rows onto ``dim`` prototypes;
* the **loss**: for every pair of different views, the cross-entropy between the teacher's
  *centred and sharpened* softmax (temperature 0.04) and the student's softmax (0.1). The
  centre is a running mean of the teacher's outputs; centring and sharpening pull in opposite
  directions, which is what keeps the outputs from collapsing to one prototype.

There are no labels, so accuracy is read by a weighted k-nearest-neighbour classifier
(k = 20, cosine similarity, temperature 0.07) on the teacher's pooled features, with a bank of
labelled training images: the usual DINO evaluation. The teacher is the model that is
evaluated, summarised and kept.

Not in this miniature: multi-crop (small local views), the teacher temperature warm-up, and
DINOv2's iBOT patch loss and KoLeo regulariser.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataSource, normalize
from .model import Encoder

__all__ = ["DinoHead", "Dino", "two_views", "dino_loss", "knn_accuracy"]


class DinoHead(nn.Module):
    """MLP (D -> 2D -> 2D -> D/2), L2-normalise, then unit-norm prototypes (D/2 -> ``dim``)."""

    def __init__(self, embed_dim: int, dim: int) -> None:
        super().__init__()
        hidden, bottleneck = 2 * embed_dim, max(embed_dim // 2, 8)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(dim, bottleneck) * 0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck)
        return z @ F.normalize(self.prototypes, dim=-1).T  # (B, dim)


def two_views(x: Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.4, 1.0)) -> Tensor:
    """Two augmented views of each image, stacked ``(2, B, 3, H, W)``; every draw from ``gen``."""
    B = x.shape[0]
    views = []
    for _ in range(2):
        u = torch.rand(B, 7, generator=gen).to(x.device)
        side = torch.sqrt(scale[0] + (scale[1] - scale[0]) * u[:, 0])  # crop side / image side
        flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
        cx, cy = (1 - side) * (2 * u[:, 2] - 1), (1 - side) * (2 * u[:, 3] - 1)  # crop centre in [-1, 1]
        theta = torch.zeros(B, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = side * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = side, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        bright, contrast = 0.6 + 0.8 * u[:, 4, None, None, None], 0.6 + 0.8 * u[:, 5, None, None, None]
        mean = v.mean(dim=(1, 2, 3), keepdim=True)
        v = ((v - mean) * contrast + mean) * bright
        grey = (u[:, 6] < 0.2)[:, None, None, None]
        v = torch.where(grey, v.mean(dim=1, keepdim=True).expand_as(v), v)
        views.append(v.clamp(0.0, 1.0))
    return torch.stack(views)


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float = 0.1,
              teacher_temp: float = 0.04) -> Tensor:
    """Cross-entropy between teacher and student over every pair of *different* views.

    Args:
        student, teacher: prototype scores ``(V, B, dim)`` for ``V`` views.
        center: ``(dim,)`` running mean of the teacher's scores.
    """
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach()
    s = F.log_softmax(student / student_temp, dim=-1)
    V = student.shape[0]
    terms = [-(t[i] * s[j]).sum(-1).mean() for i in range(V) for j in range(V) if i != j]
    return torch.stack(terms).mean()


class Dino:
    """The DINO side of one training run: teacher, heads, centre, and their updates.

    The training loop owns the student (``model``) and the optimiser; it adds
    :meth:`parameters` (the student's head) to the optimiser, calls :meth:`loss` on each batch
    and :meth:`update_teacher` after each optimiser step.
    """

    _PARTS = ("head", "teacher", "teacher_head")  # the modules a checkpoint keeps (with the centre)

    def __init__(self, model: Encoder, dim: int, momentum: float, steps: int,
                 forward: Callable[[Tensor], Tensor] | None = None) -> None:
        self.student = model
        self.forward = forward or model  # the compiled student, on a GPU
        self.head = DinoHead(model.cfg.embed_dim, dim).to(next(model.parameters()).device)
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.center = torch.zeros(dim, device=self.head.prototypes.device)
        self.momentum, self.steps = momentum, steps

    def parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The DINO loss of a batch of images ``(B, 3, H, W)`` in [0, 1]; updates the centre."""
        views = two_views(x, gen)  # (2, B, 3, H, W)
        V, B = views.shape[:2]
        flat = normalize(views.flatten(0, 1))
        s = self.head(self.forward(flat).float()).view(V, B, -1)
        with torch.no_grad():
            self.teacher.eval()
            t = self.teacher_head(self.teacher(flat).float()).view(V, B, -1)
        loss = dino_loss(s, t, self.center)
        self.center.mul_(0.9).add_(0.1 * t.mean(dim=(0, 1)))
        return loss

    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        """EMA of the student into the teacher; the momentum rises to 1 on a cosine."""
        m = 1 - (1 - self.momentum) * (math.cos(math.pi * step / max(self.steps, 1)) + 1) / 2
        for pairs in ((self.student, self.teacher), (self.head, self.teacher_head)):
            for ps, pt in zip(pairs[0].parameters(), pairs[1].parameters()):
                pt.mul_(m).add_((1 - m) * ps.detach())

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in self._PARTS} | {"center": self.center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._PARTS:
            getattr(self, name).load_state_dict(state[name])
        self.center.copy_(state["center"])


@torch.no_grad()
def _pooled(model: Encoder, source: DataSource, split: str, n: int, batch_size: int,
            device: torch.device) -> tuple[Tensor, Tensor]:
    feats, labels = [], []
    for start in range(0, n, batch_size):
        x, y = source.batch(split, torch.arange(start, min(start + batch_size, n)).numpy(), device)
        feats.append(F.normalize(model.forward_head(model.forward_features(normalize(x)), pre_logits=True).float(),
                                 dim=-1))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(model: Encoder, source: DataSource, split: str, num_images: int, bank_images: int,
                 batch_size: int, device: torch.device, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN accuracy on ``split`` with the first ``bank_images`` training images as the bank."""
    was_training = model.training
    model.eval()
    bank, bank_y = _pooled(model, source, "train", min(bank_images, source.split_size("train")), batch_size, device)
    query, y = _pooled(model, source, split, min(num_images, source.split_size(split)), batch_size, device)
    model.train(was_training)
    sim, nn_idx = (query @ bank.T).topk(min(k, len(bank)), dim=1)  # (Q, k)
    votes = torch.zeros(len(query), source.num_classes, device=query.device)
    votes.scatter_add_(1, bank_y[nn_idx], (sim / temperature).exp())
    return float((votes.argmax(1) == y).float().mean())
