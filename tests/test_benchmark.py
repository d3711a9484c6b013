"""evaluation/benchmark.py: the field's protocols on a stand-in for the standard Moving MNIST file (summed
errors, the copy-last baseline, one-line skips, LPIPS when it loads), the benchmark's part of an evaluation, and
`python -m evaluation.benchmark`: one row in the field's layout, the scored arrays saved so that another tool
rescores them to the printed numbers, and one line for a model that does not fit the file.

The commands run on untrained pose-LSTM checkpoints built here (scores need no training to be checked), the
evaluation on conftest's grey Moving MNIST run; those tests are marked e2e.
"""

import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes.mnist import write_standard_file
from fakes.predictors import BlankPredictor
from fakes.runs import write_checkpoint
from skimage.metrics import structural_similarity

import main
from engine.checkpoints import load_model
from evaluation import benchmark, evaluate
from evaluation.benchmark import PROTOCOLS, absolute_error_sum, benchmark_results, squared_error_sum
from evaluation.metrics import FRAME_METRICS, mse
from utils import DRNetError

CPU = torch.device("cpu")
GREY_MNIST = {"dataset": "mnist", "channels": 1, "image_width": 64}


def test_summed_errors_are_the_per_pixel_means_times_the_pixels():
    pred, target = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 3, 1, 16, 16)
    torch.testing.assert_close(squared_error_sum(pred, target), mse(pred, target) * 256)
    torch.testing.assert_close(absolute_error_sum(pred, target), pred.sum(dim=(-3, -2, -1)))


def test_moving_mnist_protocol_scores_the_whole_standard_file(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "BATCH", 2)  # three clips in two batches
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` fails as when it is not installed
    data = write_standard_file(tmp_path, 3).astype(np.float64) / 255  # (20, 3, 64, 64)
    results = benchmark_results(BlankPredictor(), {**GREY_MNIST, "data_root": str(tmp_path)}, None, 5,
                                torch.Generator(), FRAME_METRICS, CPU)
    scores = results["moving_mnist_10_to_10"]
    assert (scores["clips"], scores["observed"], scores["predicted"]) == (3, 10, 10)
    future, last = data[10:], data[9]
    assert scores["mse_per_frame"] == pytest.approx((future ** 2).sum(axis=(2, 3)).mean())
    assert scores["mae_per_frame"] == pytest.approx(future.sum(axis=(2, 3)).mean())
    assert scores["copy_last_mse_per_frame"] == pytest.approx(((future - last) ** 2).sum(axis=(2, 3)).mean())
    assert {"psnr", "ssim", "copy_last_psnr", "copy_last_ssim"} <= set(scores) and "lpips" not in scores
    assert results["skipped"] == {"kth_10_to_20": "the model was trained on mnist, not kth",
                                  "kth_10_to_40": "the model was trained on mnist, not kth",
                                  "lpips": "the lpips package is not installed (pip install lpips)"}
    rows = benchmark.table_rows(results)
    assert rows[0] == ("moving_mnist_10_to_10 mse_per_frame", scores["mse_per_frame"],
                       f"copy last: {scores['copy_last_mse_per_frame']:.4f}")


@pytest.mark.parametrize("case", ["colour", "no file", "wrong file", "suncg"])
def test_protocols_that_cannot_run_are_skipped_with_one_line(tmp_path, case):
    config = {**GREY_MNIST, "data_root": str(tmp_path)}
    if case == "colour":
        config["channels"] = 3
    elif case == "wrong file":
        write_standard_file(tmp_path, 0, shape=(10, 2, 64, 64))
    elif case == "suncg":
        config["dataset"] = "suncg"
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), FRAME_METRICS, CPU)
    assert set(results) == {"skipped"} and set(results["skipped"]) == set(PROTOCOLS)
    why = results["skipped"]["moving_mnist_10_to_10"]
    expected = {"colour": "grey at 64 px; this model has 3 channel\\(s\\) .*--channels 1",
                "no file": "mnist_test_seq.npy not found under .*download=True",
                "wrong file": "is not the Moving MNIST test file: uint8 \\(10, 2, 64, 64\\)",
                "suncg": "trained on suncg, not mnist"}[case]
    assert re.search(expected, why) and "\n" not in why


def test_kth_protocols_draw_from_the_test_loader_and_skip_what_it_cannot_give(monkeypatch):
    lengths = []

    def sequence_batch(batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        if length > 30:
            raise DRNetError(f"no KTH test segment has {length} frames; use shorter sequences")
        lengths.append(length)
        return torch.rand(batch_size, length, 1, 64, 64, generator=generator)

    monkeypatch.setitem(sys.modules, "lpips", None)
    config = {"dataset": "kth", "channels": 1, "image_width": 64, "data_root": "unused"}
    results = benchmark_results(BlankPredictor(), config, SimpleNamespace(sequence_batch=sequence_batch), 3,
                                torch.Generator().manual_seed(0), FRAME_METRICS, CPU)
    assert lengths == [30] and results["kth_10_to_20"]["clips"] == 3
    assert results["skipped"]["kth_10_to_40"] == "no KTH test segment has 50 frames; use shorter sequences"
    assert results["skipped"]["moving_mnist_10_to_10"] == "the model was trained on kth, not mnist"


class FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS: the mean absolute difference, on the three channels in [-1, 1] it is given."""

    def __init__(self, net: str, verbose: bool):
        super().__init__()
        assert net == "alex" and not verbose

    def forward(self, a: torch.Tensor, b: torch.Tensor, normalize: bool) -> torch.Tensor:
        assert a.shape[1] == 3 and normalize
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_is_scored_when_it_loads_and_skipped_in_one_line_when_its_weights_do_not(tmp_path, monkeypatch):
    write_standard_file(tmp_path, 2)
    config = {**GREY_MNIST, "data_root": str(tmp_path)}
    monkeypatch.setitem(sys.modules, "lpips", SimpleNamespace(LPIPS=FakeLPIPS))
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), FRAME_METRICS, CPU)
    scores = results["moving_mnist_10_to_10"]
    assert scores["lpips"] == pytest.approx(scores["mae_per_frame"] / 4096) and "lpips" not in results["skipped"]

    def no_weights(net: str, verbose: bool) -> None:
        raise RuntimeError("Downloading: alexnet-owt-7be5be79.pth\n<urlopen error [Errno -3] name resolution>")

    monkeypatch.setitem(sys.modules, "lpips", SimpleNamespace(LPIPS=no_weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the weights' place follows torch's cache
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), FRAME_METRICS, CPU)
    weights = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert results["skipped"]["lpips"] == (
        "LPIPS weights did not load (RuntimeError: <urlopen error [Errno -3] name resolution>); offline, copy "
        f"{weights} from a machine where `python -c \"import lpips; lpips.LPIPS(net='alex')\"` has run (its own "
        "linear layers come with the lpips package)")
    assert "lpips" not in results["moving_mnist_10_to_10"]


@pytest.mark.e2e
def test_evaluation_of_a_grey_lstm_reports_the_benchmark(grey_run, monkeypatch, capsys):
    # The fresh scene discriminators train for 1500 steps and are not what this test is about.
    monkeypatch.setattr(evaluate, "fresh_discriminator_scores", lambda name, *args: {
        f"{name}_discriminator_accuracy": 0.5, f"{name}_discriminator_train_accuracy": 0.5})
    monkeypatch.setitem(sys.modules, "lpips", None)
    capsys.readouterr()
    main.main(["--evaluate", "--checkpoint", str(grey_run / "lstm" / "checkpoint.pt"), "--eval_clips", "6",
               "--eval_steps", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    results = json.loads((grey_run / "lstm" / "eval" / "metrics.json").read_text())
    scores = results["benchmark"]["moving_mnist_10_to_10"]
    assert scores["clips"] == 3 and scores["source"].endswith("MovingMNIST/mnist_test_seq.npy")
    assert scores["mse_per_frame"] > 0 and 0 < scores["ssim"] <= 1
    row = f"{'benchmark':<15}{'moving_mnist_10_to_10 mse_per_frame':<38}{scores['mse_per_frame']:>10.4f}  copy last:"
    assert row in out
    assert "skipped benchmark kth_10_to_20: the model was trained on mnist, not kth" in out
    assert "skipped benchmark lpips: the lpips package is not installed" in out


# `python -m evaluation.benchmark`

@pytest.fixture
def no_lpips(monkeypatch):
    """`import lpips` fails, as where the package is not installed."""
    monkeypatch.setitem(sys.modules, "lpips", None)


def row_cells(out: str) -> dict[str, str]:
    """The printed table's model row, by column."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header, row = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return dict(zip(header, row, strict=True))


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_clips_scores_the_first_clips_and_the_default_output_is_beside_the_checkpoint(tmp_path, capsys, no_lpips):
    write_standard_file(tmp_path / "data", 3)
    checkpoint = write_checkpoint(tmp_path / "run" / "lstm" / "checkpoint.pt", tmp_path / "data")
    benchmark.main(["--checkpoint", str(checkpoint), "--clips", "2", "--save_arrays", "False", "--device", "cpu"])
    assert ", 2 clips from " in capsys.readouterr().out
    folder = tmp_path / "run" / "lstm" / "benchmark" / "moving_mnist_10_to_10"
    assert json.loads((folder / "metrics.json").read_text())["clips"] == 2
    assert not (folder / "preds.npy").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("case, expected", [
    ("one digit", "the standard file shows 2 digits per clip; this model was trained on 1 "
                  "(train one with --num_digits 2)"),
    ("colour", "the standard file is grey at 64 px; this model has 3 channel(s) at 64 px"),
    ("drnet", "is a DRNET checkpoint: the benchmark scores predicted frames"),
    ("no file", "mnist_test_seq.npy not found under"),
    ("kth asked", "kth_10_to_20 does not fit this model: the model was trained on mnist, not kth"),
])
def test_a_model_that_does_not_fit_is_one_line(tmp_path, fails_with_one_line, case, expected):
    if case != "no file":
        write_standard_file(tmp_path / "data", 2)
    changes = {"one digit": {"num_digits": 1}, "colour": {"channels": 3}}.get(case, {})
    checkpoint = write_checkpoint(tmp_path / "c.pt", tmp_path / "data", "drnet" if case == "drnet" else "lstm",
                                  **changes)
    extra = ["--protocol", "kth_10_to_20"] if case == "kth asked" else []
    fails_with_one_line(["--checkpoint", str(checkpoint), "--device", "cpu", *extra], expected,
                        command=benchmark.main, alone=True)
    assert not (tmp_path / "benchmark").exists()
