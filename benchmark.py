"""The field's video-prediction benchmarks for pose-LSTM checkpoints: the `benchmark` part of the evaluation.

Not the speed benchmark (that is bench.py). Protocols (issue 13), each scoring the frames predicted from 10
observed ones with `model.predict`:
- moving_mnist_10_to_10: the standard Moving MNIST test file, `mnist_test_seq.npy` (Srivastava et al. 2015:
  10,000 clips of 20 grey 64x64 frames with two digits), all of it, in file order. It is looked for where
  torchvision's `MovingMNIST(DATA_ROOT, download=True)` puts it, DATA_ROOT/MovingMNIST/, then in
  DATA_ROOT/MovingMNIST/raw/ and DATA_ROOT/. Only for Moving MNIST models trained grey (`--channels 1`) at
  64 px: by default ours train on coloured digits (digit n in channel n), which the file does not hold.
- kth_10_to_20, kth_10_to_40: clips of 30 and 50 frames of the KTH test persons (17-25), one action segment
  each, drawn by the KTH test loader (`eval_clips` of them, seeded), at the model's image size (most tables
  use 128 px, some 64 px). Which clips the tables enumerate differs from paper to paper; these are random ones.
A protocol that does not apply to the checkpoint, or cannot run, is listed under `skipped` with the reason,
and so is LPIPS when it cannot load.

Scores per predicted frame, averaged over all predicted frames of all clips, on pixel values in [0, 1]:
- mse_per_frame, mae_per_frame: the squared and the absolute error summed over the frame's pixels (and
  channels): the unit of the field's tables. Ours elsewhere (metrics.mse) is the per-pixel mean, these values
  divided by C * H * W (4096 for a grey 64x64 frame);
- psnr, ssim: the evaluation's (metrics.py: PSNR capped at 100 dB, SSIM with an 11-tap Gaussian window);
- lpips: LPIPS with AlexNet features (grey frames repeated to three channels), only when the `lpips` package
  and its weights load;
- copy_last_<score>: the same for repeating the last observed frame, the answer every model must beat.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from datasets import ClipDataset
from datasets.frames import last_line
from metrics import mse
from predictor import DRNetPredictor
from utils import DRNetError

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-image metric: (..., C, H, W) pairs -> (...)
N_PAST = 10
PROTOCOLS = {"moving_mnist_10_to_10": ("mnist", 10), "kth_10_to_20": ("kth", 20), "kth_10_to_40": ("kth", 40)}
SCORES = ("mse_per_frame", "mae_per_frame", "psnr", "ssim", "lpips")
MOVING_MNIST_FILE = "mnist_test_seq.npy"
MOVING_MNIST_PLACES = ("MovingMNIST", "MovingMNIST/raw", ".")  # under the data root, in this order
MOVING_MNIST_FRAMES, MOVING_MNIST_SIZE = 20, 64
BATCH = 50  # clips per `predict` call
LPIPS_TIMEOUT_S = 10  # an offline machine should fail to fetch the LPIPS weights quickly, not hang


def squared_error_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each image's pixels and channels: the tables' MSE per frame."""
    return mse(pred, target) * math.prod(pred.shape[-3:])


def absolute_error_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error summed over each image's pixels and channels: the tables' MAE per frame."""
    return (pred - target).abs().sum(dim=(-3, -2, -1))


def load_lpips(device: torch.device) -> tuple[Metric | None, str]:
    """LPIPS (AlexNet) as a per-image metric, or None and why it cannot run."""
    try:
        import lpips
    except ImportError:
        return None, "the lpips package is not installed (pip install lpips)"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(LPIPS_TIMEOUT_S)
    try:
        network = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as error:  # weights that are neither cached nor downloadable fail in many ways
        return None, f"LPIPS weights did not load ({type(error).__name__}: {last_line(error)})"
    finally:
        socket.setdefaulttimeout(previous)

    def lpips_metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image; three channels in [-1, 1] as the network expects (normalize=True scales)."""
        pred, target = (x.flatten(0, -4).expand(-1, 3, -1, -1).to(device) for x in (pred, target))
        return network(pred, target, normalize=True).view(*pred.shape[:-3]).cpu()

    return lpips_metric, ""


def moving_mnist_file(data_root: str) -> Path | None:
    """The standard Moving MNIST test file under the data root, or None."""
    for place in MOVING_MNIST_PLACES:
        path = Path(data_root) / place / MOVING_MNIST_FILE
        if path.is_file():
            return path
    return None


def open_moving_mnist(path: Path) -> np.ndarray:
    """The standard test file as a memory map (20, clips, 64, 64) uint8, checked; 800 MB, so read as needed."""
    try:
        data = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DRNetError(f"cannot read {path}: {last_line(error)}") from error
    expected = (MOVING_MNIST_FRAMES, MOVING_MNIST_SIZE, MOVING_MNIST_SIZE)
    if data.ndim != 4 or (data.shape[0], *data.shape[2:]) != expected or data.dtype != np.uint8:
        raise DRNetError(f"{path} is not the Moving MNIST test file: {data.dtype} {data.shape}, expected uint8 "
                         f"({MOVING_MNIST_FRAMES}, clips, {MOVING_MNIST_SIZE}, {MOVING_MNIST_SIZE})")
    return data


def moving_mnist_batches(data: np.ndarray) -> Iterator[torch.Tensor]:
    """The clips of the (20, clips, 64, 64) file in order, in batches (B, 20, 1, 64, 64) of floats in [0, 1]."""
    for start in range(0, data.shape[1], BATCH):
        chunk = torch.from_numpy(np.array(data[:, start:start + BATCH]))  # a writable copy (T, B, S, S)
        yield chunk.transpose(0, 1)[:, :, None].float().div_(255)


def kth_batches(test_set: ClipDataset, n_clips: int, length: int, generator: torch.Generator
                ) -> Iterator[torch.Tensor]:
    """`n_clips` test clips of `length` frames from the KTH test loader, in batches (B, T, 1, S, S)."""
    for start in range(0, n_clips, BATCH):
        yield test_set.sequence_batch(min(BATCH, n_clips - start), length, generator)


@torch.no_grad()
def score_clips(model: DRNetPredictor, batches: Iterable[torch.Tensor], n_future: int,
                frame_metrics: dict[str, Metric], device: torch.device) -> tuple[dict[str, float], int]:
    """Per-frame scores of `predict` from N_PAST frames and of copying the last one, averaged; and the clip count."""
    totals = dict.fromkeys((prefix + name for prefix in ("", "copy_last_") for name in frame_metrics), 0.0)
    clips = 0
    for batch in batches:
        past, future = batch[:, :N_PAST], batch[:, N_PAST:N_PAST + n_future]
        answers = {"": model.predict(past.to(device), n_future).cpu(), "copy_last_": past[:, -1:].expand_as(future)}
        for prefix, answer in answers.items():
            for name, metric in frame_metrics.items():
                totals[prefix + name] += metric(answer, future).double().sum().item()
        clips += len(batch)
    if clips == 0:
        raise DRNetError("no clip to score")
    return {name: total / (clips * n_future) for name, total in totals.items()}, clips


def protocol_problem(config: dict, dataset: str) -> str:
    """Why a protocol on `dataset` does not apply to a model of `config`, or "" when it does."""
    if config["dataset"] != dataset:
        return f"the model was trained on {config['dataset']}, not {dataset}"
    size = (config["channels"], config["image_width"])
    if dataset == "mnist" and size != (1, MOVING_MNIST_SIZE):
        return (f"the standard file is grey at {MOVING_MNIST_SIZE} px; this model has {size[0]} channel(s) at "
                f"{size[1]} px (train one with --channels 1 --image_width {MOVING_MNIST_SIZE})")
    return ""


def protocol_clips(dataset: str, length: int, config: dict, test_set: ClipDataset, n_clips: int,
                   generator: torch.Generator) -> tuple[Iterator[torch.Tensor], str]:
    """The clip batches a protocol scores and where they come from; DRNetError when there are none."""
    if dataset == "kth":
        return kth_batches(test_set, n_clips, length, generator), "KTH test loader"
    path = moving_mnist_file(config["data_root"])
    if path is None:
        raise DRNetError(f"{MOVING_MNIST_FILE} not found under {config['data_root']}: "
                         f"torchvision.datasets.MovingMNIST('{config['data_root']}', download=True) puts it in "
                         "its MovingMNIST/ folder")
    return moving_mnist_batches(open_moving_mnist(path)), str(path)


def benchmark_results(model: DRNetPredictor, config: dict, test_set: ClipDataset, n_clips: int,
                      generator: torch.Generator, frame_metrics: dict[str, Metric], device: torch.device) -> dict:
    """Scores of every protocol that applies, and `skipped`: protocol (or lpips) -> why not.

    `frame_metrics` are the evaluation's per-image metrics; its "psnr" and "ssim" are used.
    """
    results: dict = {"skipped": {}}
    metrics: dict[str, Metric] | None = None  # built when a protocol first runs: LPIPS may be slow to load
    for protocol, (dataset, n_future) in PROTOCOLS.items():
        problem = protocol_problem(config, dataset)
        if problem:
            results["skipped"][protocol] = problem
            continue
        try:
            batches, source = protocol_clips(dataset, N_PAST + n_future, config, test_set, n_clips, generator)
            if metrics is None:
                metrics = {"mse_per_frame": squared_error_sum, "mae_per_frame": absolute_error_sum,
                           "psnr": frame_metrics["psnr"], "ssim": frame_metrics["ssim"]}
                lpips_metric, why = load_lpips(device)
                if lpips_metric is None:
                    results["skipped"]["lpips"] = why
                else:
                    metrics["lpips"] = lpips_metric
            scores, clips = score_clips(model, batches, n_future, metrics, device)
        except DRNetError as error:  # no file, a wrong one, no KTH test clip that long, an unreadable frame
            results["skipped"][protocol] = str(error)
            continue
        results[protocol] = {**scores, "clips": clips, "observed": N_PAST, "predicted": n_future, "source": source}
    return results


def table_rows(benchmark: dict) -> list[tuple[str, float, str]]:
    """(metric, value, reference) rows for the evaluation's table: each score next to copying the last frame."""
    return [(f"{protocol} {name}", scores[name], f"copy last: {scores['copy_last_' + name]:.4f}")
            for protocol, scores in benchmark.items() if protocol != "skipped"
            for name in SCORES if name in scores]
