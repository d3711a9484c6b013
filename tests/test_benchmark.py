"""Issue 25: `python -m evaluation.benchmark`, the benchmark alone: one row in the field's layout, the scored
arrays saved so that another tool rescores them to the printed numbers, and one line for a model that does
not fit the file.

The checkpoints are untrained pose-LSTM checkpoints built here (scores need no training to be checked), and the
standard Moving MNIST file is a small random stand-in where torchvision keeps it.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from datasets.registry import DATASETS
from engine.checkpoints import drnet_checkpoint, load_model, lstm_checkpoint
from engine.config import DEFAULTS, LSTM_DEFAULTS
from evaluation import benchmark
from models import DRNetPredictor
from utils import save_checkpoint


def write_standard_file(data_root: Path, clips: int) -> np.ndarray:
    """A random stand-in for mnist_test_seq.npy: uint8 (20, clips, 64, 64) in DATA_ROOT/MovingMNIST/."""
    data = np.random.default_rng(1).integers(0, 256, (20, clips, 64, 64), dtype=np.uint8)
    (data_root / "MovingMNIST").mkdir(parents=True)
    np.save(data_root / "MovingMNIST" / "mnist_test_seq.npy", data)
    return data


def write_checkpoint(path: Path, data_root: Path, kind: str = "lstm", **changes) -> Path:
    """An untrained Moving MNIST checkpoint (grey, two digits unless `changes` say otherwise) at `path`."""
    entry = {k: v for k, v in DATASETS["mnist"].items() if k != "loader"}
    config = {"dataset": "mnist", **DEFAULTS, **entry, **LSTM_DEFAULTS, "channels": 1, "rnn_size": 8,
              "rnn_layers": 1, "data_root": str(data_root), **changes}
    torch.manual_seed(0)
    model = DRNetPredictor(config, config)
    data_state = torch.Generator().get_state()
    if kind == "lstm":
        state = lstm_checkpoint(model, torch.optim.Adam(model.lstm.parameters()), config, 7, data_state)
    else:
        state = drnet_checkpoint(model, {}, config, 7, data_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


@pytest.fixture
def no_lpips(monkeypatch):
    """`import lpips` fails, as where the package is not installed."""
    monkeypatch.setitem(sys.modules, "lpips", None)


def row_cells(out: str) -> dict[str, str]:
    """The printed table's model row, by column."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header, row = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return dict(zip(header, row, strict=True))


def test_the_row_and_the_saved_arrays_rescore_to_the_same_numbers(tmp_path, capsys, no_lpips):
    data = write_standard_file(tmp_path / "data", 3)
    checkpoint = write_checkpoint(tmp_path / "run" / "lstm" / "checkpoint.pt", tmp_path / "data")
    benchmark.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("moving_mnist_10_to_10: 10 -> 10 frames, 3 clips from ")
    cells = row_cells(out)
    assert list(cells) == list(benchmark.COLUMNS)
    assert (cells["Method"], cells["Setting"], cells["LPIPS"]) == ("DRNET", "pose LSTM iteration 7", "-")
    assert "LPIPS not scored: the lpips package is not installed" in out

    arrays = {name: np.load(tmp_path / "out" / f"{name}.npy") for name in benchmark.ARRAYS}
    frames = data.transpose(1, 0, 2, 3)[:, :, None].astype(np.float32) / 255  # (clips, 20, 1, 64, 64)
    np.testing.assert_array_equal(arrays["inputs"], frames[:, :10])
    np.testing.assert_array_equal(arrays["trues"], frames[:, 10:])
    model = load_model(checkpoint)
    torch.testing.assert_close(torch.from_numpy(arrays["preds"]), model.predict(torch.from_numpy(frames[:, :10]), 10))

    # Rescored with numpy and scikit-image alone, as another tool would: the printed figures come back.
    preds, trues = arrays["preds"].astype(np.float64), arrays["trues"].astype(np.float64)
    squared = ((preds - trues) ** 2).sum(axis=(2, 3, 4))
    assert cells["MSE"] == f"{squared.mean():.2f}"
    assert cells["MAE"] == f"{np.abs(preds - trues).sum(axis=(2, 3, 4)).mean():.2f}"
    assert cells["PSNR"] == f"{(10 * np.log10(4096 / squared)).mean():.2f}"
    legacy = np.mean([structural_similarity(p, t, win_size=7, gaussian_weights=False, data_range=2,
                                            use_sample_covariance=True, channel_axis=0)
                      for p, t in zip(preds.reshape(-1, 1, 64, 64), trues.reshape(-1, 1, 64, 64), strict=True)])
    assert cells["SSIM (OpenSTL)"] == f"{legacy:.4f}"
    gaussian = np.mean([structural_similarity(p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=1, channel_axis=0)
                        for p, t in zip(preds.reshape(-1, 1, 64, 64), trues.reshape(-1, 1, 64, 64), strict=True)])
    assert cells["SSIM (Gaussian 11)"] == f"{gaussian:.4f}"

    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert results["clips"] == 3 and results["mse_per_frame"] == pytest.approx(squared.mean())
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("scene_discriminator."))
    assert results["params"] == params and cells["Params"] == f"{params / 1e6:.2f}M"
    assert results["flops"] > 0 and results["clips_per_second"] > 0
    assert results["copy_last_mse_per_frame"] == pytest.approx(
        ((frames[:, 10:] - frames[:, 9:10]) ** 2).sum(axis=(2, 3, 4)).mean())
    assert f"wrote {tmp_path / 'out' / 'inputs.npy'}" in out


def test_clips_scores_the_first_clips_and_the_default_output_is_beside_the_checkpoint(tmp_path, capsys, no_lpips):
    write_standard_file(tmp_path / "data", 3)
    checkpoint = write_checkpoint(tmp_path / "run" / "lstm" / "checkpoint.pt", tmp_path / "data")
    benchmark.main(["--checkpoint", str(checkpoint), "--clips", "2", "--save_arrays", "False", "--device", "cpu"])
    assert ", 2 clips from " in capsys.readouterr().out
    folder = tmp_path / "run" / "lstm" / "benchmark" / "moving_mnist_10_to_10"
    assert json.loads((folder / "metrics.json").read_text())["clips"] == 2
    assert not (folder / "preds.npy").exists()


@pytest.mark.parametrize("case, expected", [
    ("one digit", "the standard file shows 2 digits per clip; this model was trained on 1 "
                  "(train one with --num_digits 2)"),
    ("colour", "the standard file is grey at 64 px; this model has 3 channel(s) at 64 px"),
    ("drnet", "is a DRNET checkpoint: the benchmark scores predicted frames"),
    ("no file", "mnist_test_seq.npy not found under"),
    ("kth asked", "kth_10_to_20 does not fit this model: the model was trained on mnist, not kth"),
])
def test_a_model_that_does_not_fit_is_one_line(tmp_path, capsys, case, expected):
    if case != "no file":
        write_standard_file(tmp_path / "data", 2)
    changes = {"one digit": {"num_digits": 1}, "colour": {"channels": 3}}.get(case, {})
    checkpoint = write_checkpoint(tmp_path / "c.pt", tmp_path / "data", "drnet" if case == "drnet" else "lstm",
                                  **changes)
    extra = ["--protocol", "kth_10_to_20"] if case == "kth asked" else []
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--checkpoint", str(checkpoint), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert expected in err and not (tmp_path / "benchmark").exists()
