"""Continuing a trained pose LSTM in a new run (`--init_lstm`), a new LSTM on a trained LSTM's DRNET, and training
it as it generates (`--free_steps N`) or on noisy poses (`--pose_noise`): what the run starts from, what it records,
and the one-line refusals.

Every test here runs main.py on conftest's two-iteration DRNET (`drnet_dir`); all are marked e2e.
"""

from pathlib import Path

import pytest
import torch

import main
from engine.checkpoints import export_lstm, export_weights, predictor_on
from engine.config import resolve_run
from utils import read_metrics

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained_lstm(drnet_dir, tiny, tmp_path_factory) -> Path:
    """A one-iteration LSTM run on `drnet_dir`, exported as a shipped pair would be: drnet.pt and lstm.pt."""
    run = tmp_path_factory.mktemp("lstm_run")
    main.main(["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--save_dir", str(run),
               "--max_iter", "1", "--rollout_len", "3", "--rnn_size", "32", "--lr", "0.01", *tiny])
    checkpoint = torch.load(run / "lstm" / "checkpoint.pt", weights_only=True)
    export_weights(checkpoint, run / "drnet.pt")
    export_lstm(checkpoint, run / "drnet.pt", run / "lstm.pt")
    return run


def lstm_flags(tiny: list[str], save_dir: Path, *extra: str) -> list[str]:
    """Flags of a one-iteration LSTM run in `save_dir`."""
    return ["--use_lstm", "True", "--save_dir", str(save_dir), "--max_iter", "1", "--rollout_len", "3", *tiny, *extra]


@pytest.mark.parametrize("start", ["lstm/checkpoint.pt", "lstm.pt"])
def test_a_new_run_starts_from_the_trained_lstm_and_its_drnet(start, trained_lstm, tiny, tmp_path):
    path = trained_lstm / start
    resolved = resolve_run(main.build_parser().parse_args(lstm_flags(tiny, tmp_path, "--init_lstm", str(path))))
    assert resolved.config["rnn_size"] == 32  # the shape comes from the LSTM it continues
    assert resolved.config["drnet_checkpoint"] == resolved.config["init_lstm"] == str(path)
    assert resolved.config["resume_from"] is None
    model = predictor_on(resolved.checkpoint, resolved.config)
    trained = torch.load(trained_lstm / "lstm" / "checkpoint.pt", weights_only=True)
    tolerance = 1e-3 if start == "lstm.pt" else 0  # the pair is stored in half precision
    for name, value in model.lstm.state_dict().items():
        torch.testing.assert_close(value, trained["lstm"][name], rtol=tolerance, atol=tolerance)
    for name, value in model.drnet_state_dict().items():
        torch.testing.assert_close(value.float(), trained["model"][name].float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("start", ["lstm/checkpoint.pt", "lstm.pt"])
def test_a_new_lstm_can_freeze_the_drnet_of_a_trained_lstm(start, trained_lstm, tiny, tmp_path):
    path = trained_lstm / start  # e.g. the shipped model: a new LSTM of another size on its DRNET
    resolved = resolve_run(main.build_parser().parse_args(
        lstm_flags(tiny, tmp_path, "--drnet_checkpoint", str(path), "--rnn_size", "16")))
    assert resolved.config["rnn_size"] == 16 and resolved.config["drnet_checkpoint"] == str(path)
    model = predictor_on(resolved.checkpoint, resolved.config)
    trained = torch.load(trained_lstm / "lstm" / "checkpoint.pt", weights_only=True)
    for name, value in model.drnet_state_dict().items():
        torch.testing.assert_close(value.float(), trained["model"][name].float(), rtol=1e-3, atol=1e-3)
    assert model.lstm.embed.out_features == 16  # a fresh LSTM, not the stored one of size 32
    main.main(lstm_flags(tiny, tmp_path, "--drnet_checkpoint", str(path), "--rnn_size", "16"))
    assert torch.load(tmp_path / "lstm" / "checkpoint.pt", weights_only=True)["iteration"] == 1


def test_free_steps_are_recorded_train_otherwise_and_survive_resume(trained_lstm, tiny, tmp_path):
    start = ["--init_lstm", str(trained_lstm / "lstm" / "checkpoint.pt")]
    main.main(lstm_flags(tiny, tmp_path / "forced", *start))
    main.main(lstm_flags(tiny, tmp_path / "free", *start, "--free_steps", "1"))
    forced, free = (torch.load(tmp_path / name / "lstm" / "checkpoint.pt", weights_only=True)
                    for name in ("forced", "free"))
    assert forced["config"]["free_steps"] == 0 and free["config"]["free_steps"] == 1
    assert "a fresh optimizer" in (tmp_path / "free" / "lstm" / "train.log").read_text()
    # The same clips and weights, another loss: with n_past 2 and n_future 2 the third input is a prediction.
    first_mse = [read_metrics(tmp_path / name / "lstm" / "metrics.csv")[0]["mse"] for name in ("forced", "free")]
    assert first_mse[0] != first_mse[1]
    main.main([*lstm_flags(tiny, tmp_path / "free", "--resume", "True"), "--max_iter", "2"])
    resumed = torch.load(tmp_path / "free" / "lstm" / "checkpoint.pt", weights_only=True)
    assert resumed["iteration"] == 2 and resumed["config"]["free_steps"] == 1


def test_pose_noise_is_recorded_changes_the_loss_and_resumes_exactly(trained_lstm, tiny, tmp_path):
    start = ["--init_lstm", str(trained_lstm / "lstm" / "checkpoint.pt"), "--save_iters", "2"]
    main.main(lstm_flags(tiny, tmp_path / "clean", *start))
    main.main([*lstm_flags(tiny, tmp_path / "whole", *start, "--pose_noise", "0.5"), "--max_iter", "2"])
    main.main(lstm_flags(tiny, tmp_path / "parts", *start, "--pose_noise", "0.5"))
    main.main([*lstm_flags(tiny, tmp_path / "parts", "--resume", "True"), "--max_iter", "2"])
    clean, whole, parts = (torch.load(tmp_path / name / "lstm" / "checkpoint.pt", weights_only=True)
                           for name in ("clean", "whole", "parts"))
    assert [run["config"]["pose_noise"] for run in (clean, whole, parts)] == [0.0, 0.5, 0.5]
    # The same clips and weights at iteration 1, other inputs: another loss.
    first_mse = [read_metrics(tmp_path / name / "lstm" / "metrics.csv")[0]["mse"] for name in ("clean", "whole")]
    assert first_mse[0] != first_mse[1]
    # Resumed, iteration 2 draws the noise the uninterrupted run drew.
    assert parts["iteration"] == whole["iteration"] == 2
    assert all(torch.equal(value, parts["lstm"][name]) for name, value in whole["lstm"].items())


@pytest.mark.parametrize("case", ["with_drnet", "not_an_lstm", "other_shape", "on_resume"])
def test_init_lstm_errors_are_one_line(case, trained_lstm, drnet_dir, tiny, tmp_path, fails_with_one_line):
    init = str(trained_lstm / "lstm.pt")
    argv = lstm_flags(tiny, tmp_path / "run", "--init_lstm", init)
    if case == "with_drnet":
        argv += ["--drnet_checkpoint", str(drnet_dir / "checkpoint.pt")]
        expected = f"--init_lstm {init} brings the DRNET its LSTM was trained on: drop --drnet_checkpoint"
    elif case == "not_an_lstm":
        argv = lstm_flags(tiny, tmp_path / "run", "--init_lstm", str(drnet_dir / "checkpoint.pt"))
        expected = "holds no pose LSTM: name an LSTM-stage checkpoint or a pose_lstm file"
    elif case == "other_shape":
        argv += ["--rnn_size", "64"]
        expected = "rnn_size=32 (asked: 64)"
    else:
        main.main(argv)
        argv += ["--resume", "True"]
        expected = "continues its own LSTM: drop --init_lstm, or start a new LSTM run"
    fails_with_one_line(argv, expected, alone=True)
