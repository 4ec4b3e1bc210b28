"""The small DINO: its views, loss, teacher update, k-NN evaluation, and exact resume."""

import math
from dataclasses import replace

import pytest
import torch

from regvit_lib import ConfigError, ModelConfig, RunConfig, ScenesConfig, TrainConfig, build_model, train
from regvit_lib.selfsup import Dino, dino_loss, knn_accuracy, two_views

DATA = ScenesConfig(img_size=24, max_per_shape=2, train_size=256, val_size=32, test_size=32)
RUN = RunConfig(
    model=ModelConfig(img_size=24, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                      num_registers=1),
    data=DATA,
    train=TrainConfig(objective="dino", steps=10, batch_size=16, warmup_steps=2, eval_every=5, eval_images=32,
                      stats_images=8, checkpoint_every=4, dino_dim=32, knn_images=64),
)


def test_views_are_seeded_in_range_and_differ() -> None:
    x = torch.rand(4, 3, 16, 16)
    a = two_views(x, torch.Generator().manual_seed(1))
    b = two_views(x, torch.Generator().manual_seed(1))
    assert a.shape == (2, 4, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a[0], a[1])


def test_loss_is_log_k_for_uniform_outputs_and_grows_with_disagreement() -> None:
    K = 16
    zeros = torch.zeros(2, 3, K)
    assert dino_loss(zeros, zeros, torch.zeros(K)).item() == pytest.approx(math.log(K))
    teacher = torch.zeros(2, 3, K)
    teacher[..., 0] = 1.0  # the teacher is sure of prototype 0
    agree, disagree = teacher.clone(), torch.zeros(2, 3, K)
    disagree[..., 1] = 1.0
    assert dino_loss(agree, teacher, torch.zeros(K)) < dino_loss(disagree, teacher, torch.zeros(K))


def test_teacher_is_an_ema_that_stops_moving_at_the_end() -> None:
    model = build_model(RUN.model, seed=0)
    dino = Dino(model, dim=8, momentum=0.5, steps=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in dino.teacher.parameters()]
    dino.update_teacher(0)  # momentum 0.5: halfway to the student
    for b, t, s in zip(before, dino.teacher.parameters(), model.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    frozen = [p.clone() for p in dino.teacher.parameters()]
    dino.update_teacher(10)  # momentum 1 at the last step
    assert all(torch.equal(a, b) for a, b in zip(frozen, dino.teacher.parameters()))


def test_knn_accuracy_is_perfect_when_features_are_the_labels() -> None:
    """A model whose pooled feature is the one-hot label (planted through the patch embedding)."""
    cfg = ModelConfig(img_size=16, patch_size=16, embed_dim=4, depth=1, num_heads=1, num_classes=0,
                      class_token=False, global_pool="avg")

    class Src:
        num_classes = 4

        def split_size(self, split: str) -> int:
            return 40

        def batch(self, split, idx, device="cpu"):
            y = torch.as_tensor(idx) % 4
            return torch.zeros(len(idx), 3, 16, 16), y

    model = build_model(cfg)
    model.forward_features = lambda x, **kw: {"patch": torch.nn.functional.one_hot(  # type: ignore[method-assign]
        torch.arange(len(x)) % 4, 4).float()[:, None]}
    assert knn_accuracy(model, Src(), "val", 40, 40, 40, torch.device("cpu"), k=5) == 1.0


def test_dino_run_is_deterministic_resumes_exactly_and_keeps_the_teacher(tmp_path) -> None:
    whole = train(RUN, root=tmp_path / "whole", progress=False)
    assert whole.metrics["objective"] == "dino" and whole.metrics["test_loss"] is None
    assert 0.0 <= whole.metrics["test_acc"] <= 1.0
    assert whole.curves[-1]["train_acc"] is None and whole.curves[-1]["val_loss"] is None
    assert len(whole.curves[-1]["sinks"]) == 2
    # 8 = student forward+backward on 2 views (2 x 3) + teacher forward on 2 views
    from regvit_lib.flops import count_flops
    assert whole.metrics["flops_per_image"] == 8 * count_flops(RUN.model)

    class Interrupt(Exception):
        pass

    def stop(done: int) -> None:
        if done == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(RUN, root=tmp_path / "cut", progress=False, on_step=stop)
    resumed = train(RUN, root=tmp_path / "cut", progress=False)
    assert resumed.metrics["resumed_from"] == 4
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert whole.curves == resumed.curves
    again = train(RUN, root=tmp_path / "whole", progress=False)
    assert again.cached


def test_dino_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="num_classes=0"):
        RunConfig(replace(RUN.model, num_classes=DATA.num_classes), DATA, RUN.train)
    with pytest.raises(ConfigError, match="mixup"):
        replace(RUN.train, mixup=0.8)
    with pytest.raises(ConfigError, match="objective"):
        replace(RUN.train, objective="mae")
    with pytest.raises(ConfigError, match="dino_momentum"):
        replace(RUN.train, dino_momentum=1.0)
    with pytest.raises(ConfigError, match="num_classes=0 but the scenes have"):
        RunConfig(RUN.model, DATA, replace(RUN.train, objective="supervised"))
