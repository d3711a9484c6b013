"""engine/loop.py: the iteration loop both stages share. Losses are read every --sync_every iterations and
before every save, a non-finite loss stops the run before its iteration is saved, the loss watch logs an
exploding loss once (and ignores accuracies and falling losses), and a run that diverges says so."""

import math

import pytest
import torch
from fakes.runs import poison_weights_from, tiny_flags

from datasets.prefetch import BatchStream
from engine import loop
from engine.loop import LossWatch, read_losses
from utils import DRNetError, MetricsLog, read_metrics


def run_loop(tmp_path, losses: list[float], save_iters: int = 1, sync_every: int = 1,
             tensors: bool = False) -> list[int]:
    """run_iterations over a step that returns `losses` in turn, as numbers or (`tensors`) as tensors still to
    be read; returns the iterations saved."""
    saved = []
    values = iter(losses)
    wrap = torch.tensor if tensors else float

    def step(batch) -> dict:
        return {"rec": wrap(next(values)), "disc_acc": wrap(0.0)}

    config = {"max_iter": len(losses), "save_iters": save_iters, "sync_every": sync_every,
              "run_dir": str(tmp_path), "quiet": True}
    batches = BatchStream(lambda generator: torch.zeros(1), torch.Generator(), 0)
    metrics = MetricsLog(tmp_path / "metrics.csv", ["rec", "disc_acc"])
    loop.run_iterations(config, 0, "DRNET", batches, step, metrics, lambda iteration, state: saved.append(iteration),
                        "--resume True")
    return saved


def test_losses_are_read_every_n_iterations_and_before_every_save(tmp_path, monkeypatch):
    reads, real_read = [], loop.read_losses
    monkeypatch.setattr(loop, "read_losses", lambda pending: reads.append(len(pending)) or real_read(pending))
    losses = [1.0 / i for i in range(1, 11)]
    saved = run_loop(tmp_path, losses, save_iters=6, sync_every=4, tensors=True)
    assert reads == [4, 2, 4]  # iteration 4 (sync_every), 6 (a save), 10 (the last, a save)
    assert saved == [6, 10]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [row["iteration"] for row in rows] == list(range(1, 11))  # still a row per iteration
    assert [row["rec"] for row in rows] == pytest.approx(losses, rel=1e-5)  # as the CSV writes them


def test_a_non_finite_loss_in_a_batch_of_reads_stops_before_the_save(tmp_path):
    with pytest.raises(DRNetError, match="DRNET stopped at iteration 2: the loss is not finite"):
        run_loop(tmp_path, [1.0, math.inf, 0.5, 0.4], save_iters=4, sync_every=10, tensors=True)
    assert [row["iteration"] for row in read_metrics(tmp_path / "metrics.csv")] == [1]


def test_read_losses_takes_tensors_and_numbers():
    pending = [(1, {"a": torch.tensor(0.25), "b": 1.0}), (2, {"a": torch.tensor(0.5), "b": 2.0})]
    assert read_losses(pending) == [(1, {"a": 0.25, "b": 1.0}), (2, {"a": 0.5, "b": 2.0})]


def test_a_non_finite_loss_stops_the_run_before_its_iteration_is_saved(tmp_path):
    with pytest.raises(DRNetError, match=r"DRNET stopped at iteration 3: the loss is not finite \(rec nan, "
                                         r"disc_acc 0\); no checkpoint was written; try a lower --lr"):
        run_loop(tmp_path, [1.0, 0.5, math.nan, 0.4])
    assert [row["iteration"] for row in read_metrics(tmp_path / "metrics.csv")] == [1, 2]


def test_an_exploding_loss_is_logged_once(tmp_path, drnet_log):
    saved = run_loop(tmp_path, [0.5, 0.4, 0.6, 0.5, 2000.0, 3000.0, 0.5])
    assert saved == [1, 2, 3, 4, 5, 6, 7]
    assert drnet_log[:1] == ["warning: iteration 5: rec 2000 is 4e+03 times its running median 0.5; the run may "
                             "be diverging (a lower --lr helps)"]
    assert sum("running median" in message for message in drnet_log) == 1


def test_the_loss_watch_ignores_accuracies_and_falling_losses():
    watch = LossWatch(factor=10, window=3)
    assert watch.check(1, {"sim": 1.0, "disc_acc": 0.0}) == []
    assert watch.check(2, {"sim": 1e-6, "disc_acc": 1.0}) == []  # a collapse is not a divergence
    assert len(watch.check(3, {"sim": 20.0, "disc_acc": 1.0})) == 1


@pytest.mark.e2e
def test_a_huge_learning_rate_is_reported_as_divergence(tmp_path, mnist_root, fails_with_one_line, monkeypatch):
    poison_weights_from(monkeypatch, 2)  # the real updates explode the losses; the poison spares a costly save
    run_dir = tmp_path / "run"
    fails_with_one_line(tiny_flags(run_dir, mnist_root, "--lr", "1e6", "--max_iter", "2", "--save_iters", "10"),
                        "stopped at iteration 2: the weights or optimizer state became non-finite",
                        "no checkpoint was written")
    assert "times its running median" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoint.pt").exists()
