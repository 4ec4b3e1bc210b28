"""The library code in regvit_lib.probes against the hand-written code it replaced.

The ``_old_*`` functions are the pre-swap code of ``regvit_lib/probes.py`` (commit 39bc4fd),
verbatim except for their names: torch L-BFGS softmax (100 iterations) -> scikit-learn
``LogisticRegression``; closed-form ridge -> ``sklearn.linear_model.Ridge``; flood fill ->
``scipy.ndimage.label``; our ``box_iou`` -> ``torchvision.ops.box_iou``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import Tensor
from torchvision.ops import box_iou

from regvit_lib import ModelConfig, ScenesConfig, build_model, render_scenes
from regvit_lib import analysis as A
from regvit_lib import probes as P

# --- the old code ---------------------------------------------------------------------------------


def _old_fit_softmax(x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-3,
                     steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic). ``x`` (n, d), ``y`` (n,)."""
    lin = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    xd = x.double()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(xd), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _old_fit_ridge(x: Tensor, y: Tensor, alpha: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Ridge regression in closed form; returns ``(W, b)`` with ``y ~ x @ W + b``."""
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)
    xc = xd - mx
    W = torch.linalg.solve(xc.T @ xc + alpha * len(x) * torch.eye(x.shape[1], dtype=xd.dtype), xc.T @ (yd - my))
    return W, my - mx @ W


def _old_lost(keys: Tensor, grid: int, patch: int, k: int = 100) -> Tensor:
    boxes = []
    for f in keys.double():
        A = f @ f.T  # (N, N)
        degree = (A > 0).sum(1)
        seed = int(torch.argmin(degree))
        order = torch.argsort(degree)
        potentials = order[: min(k, len(order))]
        expanded = potentials[A[seed, potentials] > 0]
        mask = (A[:, expanded].sum(1) > 0).reshape(grid, grid)
        comp = _old_component(mask, divmod(seed, grid))
        ys, xs = torch.nonzero(comp, as_tuple=True)
        boxes.append([int(xs.min()) * patch, int(ys.min()) * patch, (int(xs.max()) + 1) * patch,
                      (int(ys.max()) + 1) * patch])
    return torch.tensor(boxes, dtype=torch.float32)


def _old_component(mask: Tensor, start: tuple[int, int]) -> Tensor:
    """The 4-connected component of ``mask`` containing ``start`` (the start is always in it)."""
    g = mask.shape[0]
    comp = torch.zeros_like(mask)
    stack = [start]
    m = mask.clone()
    m[start] = True
    while stack:
        y, x = stack.pop()
        if not (0 <= y < g and 0 <= x < mask.shape[1]) or comp[y, x] or not m[y, x]:
            continue
        comp[y, x] = True
        stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return comp


def _old_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a`` (n, 4) against ``b`` (m, 4), ``(x0, y0, x1, y1)`` -> (n, m)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp_min(0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _old_classifier(x: Tensor, y: Tensor):
    """The old call sites' ``fit_softmax(...)`` then ``clf(x).argmax(-1)``, as ``P._classifier``."""
    lin = _old_fit_softmax(x, y, int(y.max()) + 1)
    return lambda z: lin(z.double()).argmax(-1).detach()


def _old_ridge(x: Tensor, y: Tensor):
    W, b = _old_fit_ridge(x, y)
    return lambda z: z.double() @ W + b


# --- logistic regression ----------------------------------------------------------------------------


def _objective(W: Tensor, b: Tensor, x: Tensor, y: Tensor, weight_decay: float = 1e-3) -> float:
    """The old objective: mean cross-entropy + ``weight_decay * ||W||^2``."""
    return float(F.cross_entropy(x.double() @ W.T + b, y) + weight_decay * W.pow(2).sum())


def _problem(seed: int, classes: int, n: int = 300, d: int = 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Noisy linear-teacher labels; standardised train (n) and held-out (2000) features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 2000, d, generator=gen) * torch.linspace(0.2, 3.0, d)
    logits = x @ torch.randn(d, classes, generator=gen) + 2.0 * torch.randn(n + 2000, classes, generator=gen)
    y = logits.argmax(-1)
    x_tr, x_te = P._standardise(x[:n], x[n:])
    return x_tr, y[:n], x_te, y[n:]


@pytest.mark.parametrize("seed,classes,drop", [(0, 5, None), (1, 5, None), (2, 5, None), (3, 5, 3), (4, 2, None)])
def test_logistic_regression_reaches_the_old_optimum(seed, classes, drop, monkeypatch) -> None:
    """Same predictions on >= 99 % of held-out points, and scikit-learn's objective is at most the
    old one. ``drop``: a class absent from training (it must never be predicted, and classes above
    it keep their labels). ``classes=2`` checks the doubled ``C`` of the binary case."""
    x_tr, y_tr, x_te, y_te = _problem(seed, classes)
    if drop is not None:
        keep = y_tr != drop
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    fitted: list[LogisticRegression] = []

    class Spy(LogisticRegression):
        def fit(self, *args, **kwargs):
            fitted.append(self)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr("sklearn.linear_model.LogisticRegression", Spy)  # probes imports it when it fits
    new, lin = P._classifier(x_tr, y_tr)(x_te), _old_fit_softmax(x_tr, y_tr, int(y_tr.max()) + 1)
    old = lin(x_te.double()).argmax(-1)
    assert float((new == old).double().mean()) >= 0.99
    assert abs(float((new == y_te).double().mean()) - float((old == y_te).double().mean())) <= 0.01
    clf = fitted[0]
    assert clf.n_iter_.max() < clf.max_iter  # converged
    W, b = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
    if classes == 2:  # one vector v = w1 - w0: the softmax optimum is w1 = -w0 = v / 2
        W, b = torch.cat([-W, W]) / 2, torch.cat([-b, b]) / 2
    y_idx = torch.searchsorted(torch.from_numpy(clf.classes_), y_tr)
    j_new, j_old = _objective(W, b, x_tr, y_idx), _objective(lin.weight.detach(), lin.bias.detach(), x_tr, y_tr)
    assert j_new <= j_old + 1e-8 and j_new == pytest.approx(j_old, rel=1e-3)
    if drop is not None:
        assert drop not in new.tolist() and classes - 1 in new.tolist()


def test_one_class_predicts_that_class() -> None:
    x = torch.randn(20, 3)
    assert P._classifier(x, torch.full((20,), 7))(x[:4]).tolist() == [7] * 4


# --- the probes on the smoke-scale features of tests/test_analysis.py --------------------------------

SCENES = ScenesConfig(img_size=32, val_size=600)
MODEL = ModelConfig(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_registers=2,
                    num_classes=SCENES.num_classes)


@pytest.fixture(scope="module")
def smoke():
    """As in tests/test_analysis.py: an untrained model, two planted outliers per image at block 1."""
    scenes = render_scenes(SCENES, "val", np.arange(600))
    model = build_model(MODEL, seed=0)
    N = MODEL.num_patches
    pos = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(i))[:2] for i in range(600)])
    with A.plant_outliers(model, layer=1, positions=pos, factor=30.0):
        planted = A.collect(model, scenes.image, scenes.label, batch_size=128)
    plain = A.collect(build_model(MODEL, seed=0), scenes.image[:300], scenes.label[:300])
    return scenes, planted, A.detect_outliers(planted, layer=1, k=15.0), plain, model


def _run(scenes, planted, out, plain, _) -> dict:
    dense = P.dense_probes(plain, scenes.seg[:300], scenes.depth[:300], num_seg_classes=len(SCENES.shapes) + 1)
    return {"local": P.local_probes(planted, out, layer=1), "single": P.single_token_probe(planted, out, layer=1),
            "dense": dense.as_dict()}


def test_probes_give_the_old_numbers(smoke, monkeypatch) -> None:
    """Old vs new on real features. Measured: every accuracy, mIoU and top-1 identical; position
    distance 3.25396 -> 3.25406 patches (one token's prediction moved to a neighbour); pixel L2
    and depth RMSE identical to ~1e-14 relative."""
    new = _run(*smoke)
    monkeypatch.setattr(P, "_classifier", _old_classifier)
    monkeypatch.setattr(P, "_ridge", _old_ridge)
    old = _run(*smoke)
    for kind in ("normal", "outlier"):
        a, b = new["local"][kind], old["local"][kind]
        assert a["tokens"] == b["tokens"] > 0
        assert a["position_top1"] == pytest.approx(b["position_top1"], abs=0.01)
        assert a["position_distance"] == pytest.approx(b["position_distance"], abs=0.02)
        assert a["reconstruction_l2"] == pytest.approx(b["reconstruction_l2"], rel=1e-8)
    assert set(new["single"]) == set(old["single"]) == {"normal", "outlier", "cls", "reg0", "reg1"}
    for kind, row in new["single"].items():
        assert row["accuracy"] == pytest.approx(old["single"][kind]["accuracy"], abs=0.01)
    assert new["dense"]["classification"] == pytest.approx(old["dense"]["classification"], abs=0.01)
    assert new["dense"]["segmentation_miou"] == pytest.approx(old["dense"]["segmentation_miou"], abs=0.01)
    assert new["dense"]["depth_rmse"] == pytest.approx(old["dense"]["depth_rmse"], rel=1e-8)


def test_lost_boxes_on_the_smoke_keys(smoke) -> None:
    scenes, planted, _, _, model = smoke
    keys = A.lost_keys(model, planted)
    new = P.lost(keys, planted.grid, MODEL.patch_size)
    assert torch.equal(new, _old_lost(keys, planted.grid, MODEL.patch_size))
    assert P.corloc(new, scenes.boxes, scenes.box_valid) > 0


# --- ridge, connected components, boxes ------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-4, 1e-2, 1.0])
def test_ridge_is_the_closed_form(alpha) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=gen) * torch.linspace(0.1, 5, 12) + 3.0
    y = x @ torch.randn(12, 3, generator=gen) + torch.randn(200, 3, generator=gen) + 1.0
    z = torch.randn(50, 12, generator=gen)
    for target in (y, y[:, 0]):
        W, b = _old_fit_ridge(x, target, alpha)
        torch.testing.assert_close(P._ridge(x, target, alpha)(z), z.double() @ W + b, rtol=1e-8, atol=0)


def test_component_is_the_old_flood_fill() -> None:
    rng = np.random.default_rng(0)
    split = 0
    for _ in range(200):
        h, w = rng.integers(4, 10, size=2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        start = (int(rng.integers(h)), int(rng.integers(w)))
        new = P._component(mask, start)
        assert np.array_equal(new, _old_component(torch.from_numpy(mask), start).numpy())
        assert new[start]
        split += int(new.sum() < mask.sum())
    assert split > 100  # most grids have more than one component


def _boxes(rng: np.random.Generator, n: int) -> Tensor:
    """Integer corners in 0..8 (many zero-width, shared-edge and disjoint boxes), x0 <= x1, y0 <= y1."""
    c = rng.integers(0, 9, size=(n, 2, 2))
    return torch.from_numpy(np.concatenate([c.min(1), c.max(1)], 1)).float()


def test_box_iou_is_torchvisions() -> None:
    """Identical for boxes with x0 <= x1 and y0 <= y1 (all that LOST and the scene data produce).
    Inverted boxes differ: we clamped their area to 0, torchvision keeps it negative."""
    rng = np.random.default_rng(0)
    a, b = _boxes(rng, 60), _boxes(rng, 70)
    a[:20] += torch.from_numpy(rng.random((20, 1))).float()  # some fractional corners
    new, old = box_iou(a, b), _old_box_iou(a, b)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-6, equal_nan=True)
    assert (old == 0).any() and old.isnan().any() and (old == 1).any() and ((old > 0) & (old < 1)).any()
    pred, gt = _boxes(rng, 40), _boxes(rng, 40 * 3).reshape(40, 3, 4)
    valid = torch.from_numpy(rng.random((40, 3)) < 0.7)
    for thr in (0.1, 0.5):
        hits = [bool((_old_box_iou(p[None], g[v]) >= thr).any()) if v.any() else False
                for p, g, v in zip(pred, gt, valid)]
        assert P.corloc(pred, gt, valid, thr) == float(np.mean(hits))


def test_lost_on_random_keys() -> None:
    gen = torch.Generator().manual_seed(0)
    g, D = 8, 16
    smooth = F.interpolate(torch.randn(30, D, 3, 3, generator=gen), size=(g, g), mode="bilinear")
    keys = torch.cat([torch.randn(30, g * g, D, generator=gen),  # noise
                      smooth.flatten(2).transpose(1, 2) + 0.3 * torch.randn(30, g * g, D, generator=gen)])
    for k in (100, 10):
        new = P.lost(keys, g, 4, k=k)
        assert torch.equal(new, _old_lost(keys, g, 4, k=k))
        assert len({tuple(b) for b in new.tolist()}) > 10  # varied boxes, not the whole image each time
