"""tools/lstm_screen.py: the training loss it reads beside a checkpoint, to compare with unseen clips, and the
figures of one screened checkpoint."""

import math

import pytest
import torch
from fakes.runs import small_mnist_config

from models import DRNetPredictor
from tools import print_table
from tools.lstm_screen import encode_in_chunks, ink_centres, main, screen, step_label, training_loss
from train_lstm import encode_clips


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


def test_ink_centres_are_the_weighted_pixel_positions_over_all_channels():
    frames = torch.zeros(1, 2, 3, 8, 8)
    frames[0, 0, 0, 3, 5] = 1.0  # one pixel: its own position
    frames[0, 1, 1, 2, 2], frames[0, 1, 2, 6, 2] = 1.0, 3.0  # two colours: row (2 * 1 + 6 * 3) / 4 = 5
    assert ink_centres(frames).tolist() == [[[3.0, 5.0], [5.0, 2.0]]]


@pytest.fixture
def one_digit_lstm(grey_run, monkeypatch, tmp_path) -> str:
    """The grey run's LSTM checkpoint marked as one digit (which the classifier reads), run from beside its data."""
    checkpoint = torch.load(grey_run / "lstm" / "checkpoint.pt", weights_only=True)
    for config in (checkpoint["config"], checkpoint["drnet_config"]):
        config["num_digits"] = 1
    path = str(tmp_path / "checkpoint.pt")
    torch.save(checkpoint, path)
    monkeypatch.chdir(grey_run.parent)  # the run's data root is `data` beside it
    return path


@pytest.mark.e2e
def test_screen_rows_hold_every_figure_and_count_blank_roll_outs_as_faded(one_digit_lstm, monkeypatch):
    path = one_digit_lstm
    row = screen(path, clips=4, steps=12, seed=2)
    assert {"identity@10", "true poses@10", "mse@10", "faded@10", "pose mse test", "pose mse unseen train",
            "pose mse trained on", "free pose mse test"} <= set(row) and "identity@50" not in row
    assert all(0 <= row[f"{name}@{step}"] <= 1 for name in ("identity", "true poses", "faded") for step in (1, 10))
    assert 0 <= row["place px@1"] < 64 and 0 <= row["true poses place px@10"] < 64
    # A model that draws blank frames: every generated frame has faded, and its MSE is the true frames' power.
    monkeypatch.setattr(DRNetPredictor, "predict", lambda self, past, steps: torch.zeros(
        past.shape[0], steps, *past.shape[2:]))
    blank = screen(path, clips=4, steps=12, seed=2)
    assert blank["faded@1"] == blank["faded@10"] == 1.0
    assert blank["mse@10"] > 0 and blank["pose mse test"] == row["pose mse test"]


@pytest.mark.e2e
def test_a_window_averages_each_figure_over_the_steps_that_end_at_its_step(one_digit_lstm, monkeypatch):
    path = one_digit_lstm
    monkeypatch.setattr("tools.lstm_screen.STEPS", tuple(range(1, 9)))  # every step, to average by hand
    each = screen(path, clips=4, steps=8, seed=2)
    averaged = screen(path, clips=4, steps=8, seed=2, window=3, rollout_only=True)
    assert "identity@6-8" in averaged and "identity@8" not in averaged and "identity@1" in averaged
    for name in ("identity", "mse", "faded", "place px"):
        assert averaged[f"{name}@6-8"] == pytest.approx(sum(each[f"{name}@{s}"] for s in (6, 7, 8)) / 3)
        assert averaged[f"{name}@1-2"] == pytest.approx((each[f"{name}@1"] + each[f"{name}@2"]) / 2)
    assert math.isnan(averaged["true poses@6-8"]) and math.isnan(averaged["true poses place px@6-8"])
    assert not math.isnan(each["true poses@8"]) and averaged["pose mse test"] == each["pose mse test"]


def test_clips_encoded_in_chunks_match_the_clips_encoded_at_once(monkeypatch):
    torch.manual_seed(0)
    model = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1}).eval()
    clips = torch.rand(5, 4, 1, 64, 64)
    monkeypatch.setattr("tools.lstm_screen.CHUNK_CLIPS", 2)  # chunks of 2, 2 and 1 clips
    with torch.no_grad():
        chunked, at_once = encode_in_chunks(model, clips, n_past=2), encode_clips(model, clips, n_past=2)
    assert chunked[0].shape == (5, 8) and chunked[1].shape == (5, 4, 3)
    for got, expected in zip(chunked, at_once, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_step_labels_name_the_window_clipped_at_the_first_step():
    assert [step_label(s, 1) for s in (1, 100)] == ["1", "100"]
    assert [step_label(s, 50) for s in (1, 10, 100, 500)] == ["1", "1-10", "51-100", "451-500"]


def test_the_table_has_a_row_per_checkpoint_with_whole_numbers_where_asked(capsys):
    print_table({"a.pt": {"iteration": 300.0, "mse@1": 0.01234}, "b.pt": {"iteration": 50.0, "mse@1": 0.5}},
                whole=("iteration",), digits=3)
    assert capsys.readouterr().out.splitlines() == ["| checkpoint | iteration | mse@1 |", "|---|---|---|",
                                                    "| a.pt | 300 | 0.012 |", "| b.pt | 50 | 0.500 |"]


@pytest.mark.parametrize("flag", ["--window", "--clips", "--steps"])
def test_a_count_below_one_is_refused_in_one_line_before_any_checkpoint_is_read(monkeypatch, capsys, flag):
    monkeypatch.setattr("sys.argv", ["lstm_screen", "missing.pt", flag, "0"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err
