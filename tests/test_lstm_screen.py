"""tools/lstm_screen.py: the training loss it reads beside a checkpoint, to compare with unseen clips."""

import math

import pytest

from tools.lstm_screen import training_loss


def write_losses(path, losses: dict[int, float]) -> None:
    path.write_text("iteration,mse\n" + "".join(f"{i},{v}\n" for i, v in losses.items()))


@pytest.mark.parametrize("checkpoint", ["checkpoint.pt", "checkpoints/iter_0000300.pt"])
def test_training_loss_averages_the_last_hundred_iterations_up_to_the_checkpoint(tmp_path, checkpoint):
    lstm = tmp_path / "lstm"
    lstm.mkdir()
    # 1..300: the loss is 1.0 up to 200, then 0.5 from 201 to 300, then 9.0 after the checkpoint.
    write_losses(lstm / "metrics.csv", {i: 1.0 if i <= 200 else 0.5 if i <= 300 else 9.0 for i in range(1, 401)})
    assert training_loss(str(lstm / checkpoint), 300) == pytest.approx(0.5)
    assert training_loss(str(lstm / checkpoint), 250) == pytest.approx((50 * 1.0 + 50 * 0.5) / 100)


def test_training_loss_is_nan_without_a_log_or_without_iterations_in_the_window(tmp_path):
    assert math.isnan(training_loss(str(tmp_path / "checkpoint.pt"), 100))
    write_losses(tmp_path / "metrics.csv", {1: 0.3, 2: 0.2})
    assert math.isnan(training_loss(str(tmp_path / "checkpoint.pt"), 500))
