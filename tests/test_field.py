"""Issue 13, the field's habits: the benchmark protocol (benchmark.py and its part of the evaluation), the
torch.hub entry points (hubconf.py), and the install and reuse files (requirements, constraints, licence,
citation).

The end-to-end checks share one grey Moving MNIST run (DRNET for two iterations, then the pose LSTM for one)
on twenty made-up digits written as torchvision's raw MNIST files, so no test loads the real digits; the
fixed test clips behind the periodic metrics are made fewer, as in test_dataset_runs.py.
"""

import json
import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import main
import train_drnet
import train_lstm
from engine.checkpoints import load_model
from evaluation import benchmark, evaluate
from evaluation.benchmark import PROTOCOLS, absolute_error_sum, benchmark_results, squared_error_sum
from evaluation.metrics import mse
from utils import DRNetError

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
GREY_MNIST = {"dataset": "mnist", "channels": 1, "image_width": 64}


class BlankPredictor:
    """Predicts black frames: its summed squared error is the targets' summed squared ink."""

    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        return torch.zeros(past.shape[0], n_future, *past.shape[2:])


def write_moving_mnist(data_root: Path, clips: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A stand-in for the standard test file where torchvision keeps it: random uint8 (20, clips, 64, 64)."""
    data = np.random.default_rng(0).integers(0, 256, shape or (20, clips, 64, 64), dtype=np.uint8)
    folder = data_root / "MovingMNIST"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mnist_test_seq.npy", data)
    return data


def write_mnist_raw(data_root: Path, per_split: int = 20) -> None:
    """torchvision's raw MNIST files (big-endian idx) holding rectangles of ten sizes as the ten digits."""
    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((per_split, 28, 28), dtype=np.uint8)
    labels = np.arange(per_split, dtype=np.uint8) % 10
    for i, label in enumerate(labels):
        images[i, 2:26 - label, 3:24 - label] = 100 + 15 * label
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, per_split, 28, 28)
                                                          + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, per_split) + labels.tobytes())


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory) -> Path:
    """A grey Moving MNIST run directory: DRNET checkpoint.pt and lstm/checkpoint.pt; data root `data` beside it."""
    run = tmp_path_factory.mktemp("field") / "run"
    data = run.parent / "data"
    write_mnist_raw(data)
    write_moving_mnist(data, 3)
    shared = ["--save_dir", str(run), "--data_root", str(data), "--device", "cpu", "--channels", "1"]
    with pytest.MonkeyPatch.context() as patch:
        for module, name, value in ((train_drnet, "TEST_CLIPS", 8), (train_drnet, "SWAP_CLIPS", 8),
                                    (train_lstm, "METRIC_CLIPS", 4), (train_lstm, "PICTURE_CLIPS", 2)):
            patch.setattr(module, name, value)
        main.main([*shared, "--max_iter", "2", "--batch_size", "4", "--save_iters", "2"])
        main.main([*shared, "--use_lstm", "True", "--max_iter", "1", "--batch_size", "2", "--save_iters", "1",
                   "--n_past", "2", "--n_future", "2", "--rnn_size", "8", "--rnn_layers", "1", "--rollout_len", "2"])
    return run


def test_summed_errors_are_the_per_pixel_means_times_the_pixels():
    pred, target = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 3, 1, 16, 16)
    torch.testing.assert_close(squared_error_sum(pred, target), mse(pred, target) * 256)
    torch.testing.assert_close(absolute_error_sum(pred, target), pred.sum(dim=(-3, -2, -1)))


def test_moving_mnist_protocol_scores_the_whole_standard_file(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "BATCH", 2)  # three clips in two batches
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` fails as when it is not installed
    data = write_moving_mnist(tmp_path, 3).astype(np.float64) / 255  # (20, 3, 64, 64)
    results = benchmark_results(BlankPredictor(), {**GREY_MNIST, "data_root": str(tmp_path)}, None, 5,
                                torch.Generator(), evaluate.FRAME_METRICS, CPU)
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
        write_moving_mnist(tmp_path, 0, shape=(10, 2, 64, 64))
    elif case == "suncg":
        config["dataset"] = "suncg"
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), evaluate.FRAME_METRICS, CPU)
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
                                torch.Generator().manual_seed(0), evaluate.FRAME_METRICS, CPU)
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
    write_moving_mnist(tmp_path, 2)
    config = {**GREY_MNIST, "data_root": str(tmp_path)}
    monkeypatch.setitem(sys.modules, "lpips", SimpleNamespace(LPIPS=FakeLPIPS))
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), evaluate.FRAME_METRICS, CPU)
    scores = results["moving_mnist_10_to_10"]
    assert scores["lpips"] == pytest.approx(scores["mae_per_frame"] / 4096) and "lpips" not in results["skipped"]

    def no_weights(net: str, verbose: bool) -> None:
        raise RuntimeError("Downloading: alexnet-owt-7be5be79.pth\n<urlopen error [Errno -3] name resolution>")

    monkeypatch.setitem(sys.modules, "lpips", SimpleNamespace(LPIPS=no_weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the weights' place follows torch's cache
    results = benchmark_results(BlankPredictor(), config, None, 2, torch.Generator(), evaluate.FRAME_METRICS, CPU)
    weights = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert results["skipped"]["lpips"] == (
        "LPIPS weights did not load (RuntimeError: <urlopen error [Errno -3] name resolution>); offline, copy "
        f"{weights} from a machine where `python -c \"import lpips; lpips.LPIPS(net='alex')\"` has run (its own "
        "linear layers come with the lpips package)")
    assert "lpips" not in results["moving_mnist_10_to_10"]


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


def test_torch_hub_builds_models_from_checkpoints(grey_run):
    frames = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    drnet = torch.hub.load(str(REPO), "drnet", source="local", checkpoint=str(grey_run / "checkpoint.pt"))
    assert not hasattr(drnet, "predict") and not drnet.training
    expected = load_model(grey_run / "checkpoint.pt")
    torch.testing.assert_close(drnet(frames, frames), expected(frames, frames), rtol=0, atol=0)
    predictor = torch.hub.load(str(REPO), "drnet", source="local", checkpoint=str(grey_run / "lstm" / "checkpoint.pt"))
    assert predictor.predict(frames[:, None], 3).shape == (2, 3, 1, 64, 64)
    if (REPO / "saved_results" / "drnet_mnist_fp16.pt").is_file():
        assert torch.hub.load(str(REPO), "drnet_mnist", source="local").config["dataset"] == "mnist"
    else:
        with pytest.raises(DRNetError, match="drnet_mnist_fp16.pt is not shipped with this copy") as error:
            torch.hub.load(str(REPO), "drnet_mnist", source="local")
        assert "\n" not in str(error.value)


# The import name of each pinned package whose name differs from it.
IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn", "scikit-image": "skimage",
                "imageio-ffmpeg": "imageio_ffmpeg"}


def pins(path: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements or constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith(("-c ", "-r ")):
            name, version = line.split("==")  # every line is an exact pin
            found[name.lower()] = version
    return found


def test_every_requirement_is_pinned_and_imported_and_constraints_pin_only_the_rest():
    direct = pins(REPO / "requirements.txt") | pins(REPO / "requirements-dev.txt")
    assert "-c constraints.txt" in (REPO / "requirements.txt").read_text().splitlines()
    assert not set(pins(REPO / "constraints.txt")) & set(direct)
    sources = "\n".join(path.read_text() for path in REPO.glob("**/*.py") if ".venv" not in path.parts)
    for name in direct:
        if name not in ("pytest", "ruff"):  # tools, run rather than imported
            module = IMPORT_NAMES.get(name, name)
            assert re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE), f"{name} is never imported"


def test_licence_and_citation_name_the_authors_and_the_paper():
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 The DRNET reproduction authors")
    citation = (REPO / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and "preferred-citation:" in citation
    for words in ('family-names: "Denton"', 'family-names: "Birodkar"', "year: 2017",
                  'title: "Unsupervised Learning of Disentangled Representations from Video"'):
        assert words in citation
