"""The field's video-prediction benchmarks for pose-LSTM checkpoints: the `benchmark` part of the evaluation, and
a command of its own that scores one protocol without the rest of the evaluation (docs/benchmark.md):

    python -m evaluation.benchmark --checkpoint runs/mnist_grey/lstm/checkpoint.pt [--protocol moving_mnist_10_to_10]

It prints one row in the layout of the field's tables (method, setting, params, FLOPs, FPS, MSE, MAE, both
SSIMs, PSNR, LPIPS) and saves what it scored as OpenSTL does, float32 arrays (clips, T, C, H, W) in [0, 1]:
inputs.npy (the observed frames), trues.npy (the ground truth) and preds.npy (the predictions), with
metrics.json, in --out (default: benchmark/<protocol>/ beside the checkpoint). Protocols, each scoring the
frames predicted from 10 observed ones with `model.predict`:
- moving_mnist_10_to_10: the standard Moving MNIST test file, `mnist_test_seq.npy` (Srivastava et al. 2015:
  10,000 clips of 20 grey 64x64 frames with two digits), all of it, in file order. It is looked for where
  torchvision's `MovingMNIST(DATA_ROOT, download=True)` puts it, DATA_ROOT/MovingMNIST/, then in
  DATA_ROOT/MovingMNIST/raw/ and DATA_ROOT/. Only for Moving MNIST models trained grey (`--channels 1`) at
  64 px on two digits: by default ours train on coloured digits (digit n in channel n), which the file does not
  hold, and a one-digit model has never seen two.
- kth_10_to_20, kth_10_to_40: clips of 30 and 50 frames of the KTH test persons (17-25), one action segment
  each, drawn by the KTH test loader (`eval_clips` of them, seeded), at the model's image size (most tables
  use 128 px, some 64 px). Which clips the tables enumerate differs from paper to paper; these are random ones.
A protocol that does not apply to the checkpoint, or cannot run, is listed under `skipped` with the reason,
and so is LPIPS when it cannot load.

Scores per predicted frame, averaged over all predicted frames of all clips, on pixel values in [0, 1]:
- mse_per_frame, mae_per_frame: the squared and the absolute error summed over the frame's pixels (and
  channels): the unit of the field's tables. Ours elsewhere (metrics.mse) is the per-pixel mean, these values
  divided by C * H * W (4096 for a grey 64x64 frame);
- psnr, ssim: the evaluation's (PSNR capped at 100 dB, SSIM with an 11-tap Gaussian window and
  data range 1, equal to scikit-image's Gaussian SSIM);
- ssim_openstl: the SSIM of OpenSTL's tables (metrics.ssim_openstl: 7x7 uniform window, data range 2);
- lpips: LPIPS with AlexNet features (grey frames repeated to three channels), only when the `lpips` package
  and its weights load;
- clips_per_second: clips of N_PAST frames that `predict` extends per second, BATCH clips per call (the FPS
  column: throughput in clips, as OpenSTL measures it), timed on the scored clips;
- copy_last_<score>: the same for repeating the last observed frame, the answer every model must beat.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m evaluation.benchmark", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from datasets import ClipDataset
from datasets.frames import last_line
from evaluation.metrics import FRAME_METRICS, mse, ssim, ssim_openstl
from models import DRNetPredictor
from utils import USER_ERROR, DRNetError, resolve_device, str2bool

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-image metric: (..., C, H, W) pairs -> (...)
N_PAST = 10
PROTOCOLS = {"moving_mnist_10_to_10": ("mnist", 10), "kth_10_to_20": ("kth", 20), "kth_10_to_40": ("kth", 40)}
SCORES = ("mse_per_frame", "mae_per_frame", "psnr", "ssim", "ssim_openstl", "lpips")
MOVING_MNIST_FILE = "mnist_test_seq.npy"
MOVING_MNIST_PLACES = ("MovingMNIST", "MovingMNIST/raw", ".")  # under the data root, in this order
MOVING_MNIST_FRAMES, MOVING_MNIST_SIZE, MOVING_MNIST_DIGITS = 20, 64, 2
BATCH = 50  # clips per `predict` call
LPIPS_TIMEOUT_S = 10  # an offline machine should fail to fetch the LPIPS weights quickly, not hang
KTH_CLIPS = 1000  # random KTH test clips scored by default, as many as the evaluation's parts
ARRAYS = ("inputs", "trues", "preds")  # OpenSTL's names for the observed frames, the ground truth, the predictions


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
        return None, (f"LPIPS weights did not load ({type(error).__name__}: {last_line(error)}); offline, copy "
                      f"{lpips_weights()} from a machine where `python -c \"import lpips; lpips.LPIPS(net='alex')\"` "
                      "has run (its own linear layers come with the lpips package)")
    finally:
        socket.setdefaulttimeout(previous)

    def lpips_metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image; three channels in [-1, 1] as the network expects (normalize=True scales)."""
        pred, target = (x.flatten(0, -4).expand(-1, 3, -1, -1).to(device) for x in (pred, target))
        return network(pred, target, normalize=True).view(*pred.shape[:-3]).cpu()

    return lpips_metric, ""


def lpips_weights() -> Path:
    """Where LPIPS (AlexNet) looks for torchvision's AlexNet weights, the file it downloads: the torch hub cache."""
    from torchvision.models import AlexNet_Weights

    name = Path(urlparse(AlexNet_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


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


def moving_mnist_batches(data: np.ndarray, n_clips: int) -> Iterator[torch.Tensor]:
    """The first `n_clips` clips of the (20, clips, 64, 64) file in order, in batches (B, 20, 1, 64, 64) in [0, 1]."""
    for start in range(0, n_clips, BATCH):
        chunk = torch.from_numpy(np.array(data[:, start:min(start + BATCH, n_clips)]))  # a writable copy (T, B, S, S)
        yield chunk.transpose(0, 1)[:, :, None].float().div_(255)


def kth_batches(test_set: ClipDataset, n_clips: int, length: int, generator: torch.Generator
                ) -> Iterator[torch.Tensor]:
    """`n_clips` test clips of `length` frames from the KTH test loader, in batches (B, T, 1, S, S)."""
    for start in range(0, n_clips, BATCH):
        yield test_set.sequence_batch(min(BATCH, n_clips - start), length, generator)


class Scored(NamedTuple):
    """A protocol's mean scores per predicted frame, the clips scored, and the clips `predict` extends per second."""

    scores: dict[str, float]
    clips: int
    clips_per_second: float


Keep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]  # (observed, future, predicted) of each batch


@torch.no_grad()
def score_clips(model: DRNetPredictor, batches: Iterable[torch.Tensor], n_future: int,
                frame_metrics: dict[str, Metric], device: torch.device, total: int | None = None,
                keep: Keep | None = None, label: str = "benchmark") -> Scored:
    """Per-frame scores of `predict` from N_PAST frames and of copying the last one, averaged over all frames.

    `keep`, when given, receives each batch's observed frames, ground truth and predictions; `total` (clips)
    sizes the progress bar, which shows on a terminal only.
    """
    totals = dict.fromkeys((prefix + name for prefix in ("", "copy_last_") for name in frame_metrics), 0.0)
    clips, predicting = 0, 0.0
    with tqdm(total=total, desc=label, unit="clip", disable=None, leave=False) as progress:
        for batch in batches:
            past, future = batch[:, :N_PAST], batch[:, N_PAST:N_PAST + n_future]
            began = time.perf_counter()
            predicted = model.predict(past.to(device), n_future).cpu()  # .cpu() waits for an accelerator
            predicting += time.perf_counter() - began
            if keep is not None:
                keep(past, future, predicted)
            for prefix, answer in {"": predicted, "copy_last_": past[:, -1:].expand_as(future)}.items():
                for name, metric in frame_metrics.items():
                    totals[prefix + name] += metric(answer, future).double().sum().item()
            clips += len(batch)
            progress.update(len(batch))
    if clips == 0:
        raise DRNetError("no clip to score")
    return Scored({name: value / (clips * n_future) for name, value in totals.items()}, clips, clips / predicting)


def protocol_problem(config: dict, dataset: str) -> str:
    """Why a protocol on `dataset` does not apply to a model of `config`, or "" when it does."""
    if config["dataset"] != dataset:
        return f"the model was trained on {config['dataset']}, not {dataset}"
    size = (config["channels"], config["image_width"])
    if dataset == "mnist" and size != (1, MOVING_MNIST_SIZE):
        return (f"the standard file is grey at {MOVING_MNIST_SIZE} px; this model has {size[0]} channel(s) at "
                f"{size[1]} px (train one with --channels 1 --image_width {MOVING_MNIST_SIZE})")
    digits = config.get("num_digits", MOVING_MNIST_DIGITS)
    if dataset == "mnist" and digits != MOVING_MNIST_DIGITS:
        return (f"the standard file shows {MOVING_MNIST_DIGITS} digits per clip; this model was trained on "
                f"{digits} (train one with --num_digits {MOVING_MNIST_DIGITS})")
    return ""


def protocol_clips(dataset: str, length: int, config: dict, test_set: ClipDataset | None, n_clips: int | None,
                   generator: torch.Generator) -> tuple[Iterator[torch.Tensor], int, str]:
    """The clip batches a protocol scores, how many clips, and where they come from; DRNetError when there are none.

    `n_clips`: the KTH clips to draw; on Moving MNIST the first clips of the file (None: all of them).
    """
    if dataset == "kth":
        n_clips = KTH_CLIPS if n_clips is None else n_clips
        return kth_batches(test_set, n_clips, length, generator), n_clips, "KTH test loader"
    path = moving_mnist_file(config["data_root"])
    if path is None:
        raise DRNetError(f"{MOVING_MNIST_FILE} not found under {config['data_root']}: "
                         f"torchvision.datasets.MovingMNIST('{config['data_root']}', download=True) puts it in "
                         "its MovingMNIST/ folder")
    data = open_moving_mnist(path)
    n_clips = data.shape[1] if n_clips is None else min(n_clips, data.shape[1])
    return moving_mnist_batches(data, n_clips), n_clips, str(path)


def protocol_metrics(frame_metrics: dict[str, Metric], device: torch.device, skipped: dict) -> dict[str, Metric]:
    """The tables' per-frame scores, with the evaluation's psnr and ssim; LPIPS when it loads, else in `skipped`."""
    metrics = {"mse_per_frame": squared_error_sum, "mae_per_frame": absolute_error_sum,
               "psnr": frame_metrics["psnr"], "ssim": frame_metrics["ssim"], "ssim_openstl": ssim_openstl}
    lpips_metric, why = load_lpips(device)
    if lpips_metric is None:
        skipped["lpips"] = why
    else:
        metrics["lpips"] = lpips_metric
    return metrics


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
            batches, total, source = protocol_clips(dataset, N_PAST + n_future, config, test_set,
                                                    n_clips if dataset == "kth" else None, generator)
            metrics = metrics or protocol_metrics(frame_metrics, device, results["skipped"])
            scored = score_clips(model, batches, n_future, metrics, device, total, label=protocol)
        except DRNetError as error:  # no file, a wrong one, no KTH test clip that long, an unreadable frame
            results["skipped"][protocol] = str(error)
            continue
        results[protocol] = {**scored.scores, "clips": scored.clips, "clips_per_second": scored.clips_per_second,
                             "observed": N_PAST, "predicted": n_future, "source": source}
    return results


def table_rows(benchmark: dict) -> list[tuple[str, float, str]]:
    """(metric, value, reference) rows for the evaluation's table: each score next to copying the last frame."""
    return [(f"{protocol} {name}", scores[name], f"copy last: {scores['copy_last_' + name]:.4f}")
            for protocol, scores in benchmark.items() if protocol != "skipped"
            for name in SCORES if name in scores]


# ---- The command: one protocol, one row, the arrays ----

COLUMNS = ("Method", "Setting", "Params", "FLOPs", "FPS", "MSE", "MAE", "SSIM (Gaussian 11)", "SSIM (OpenSTL)",
           "PSNR", "LPIPS")
ROW_SCORES = {"MSE": ("mse_per_frame", ".2f"), "MAE": ("mae_per_frame", ".2f"), "SSIM (Gaussian 11)": ("ssim", ".4f"),
              "SSIM (OpenSTL)": ("ssim_openstl", ".4f"), "PSNR": ("psnr", ".2f"), "LPIPS": ("lpips", ".4f")}


def inference_size(model: DRNetPredictor, frame_shape: tuple[int, ...], n_future: int,
                   device: torch.device) -> tuple[int, float]:
    """Parameters used at inference (not the scene discriminator's) and multiply-adds of predicting one clip.

    Multiply-adds are what fvcore, which OpenSTL's FLOPs column comes from, counts as one FLOP each.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("scene_discriminator."))
    with FlopCounterMode(display=False) as counter:
        model.predict(torch.zeros(1, N_PAST, *frame_shape, device=device), n_future)
    return params, counter.get_total_flops() / 2


class ArrayFiles:
    """inputs.npy, trues.npy, preds.npy in a folder, float32 (clips, T, C, H, W), filled batch by batch on disk."""

    def __init__(self, folder: Path, n_clips: int, n_future: int, frame_shape: tuple[int, ...]):
        lengths = dict(zip(ARRAYS, (N_PAST, n_future, n_future), strict=True))
        self.paths = {name: folder / f"{name}.npy" for name in ARRAYS}
        self.arrays = {name: np.lib.format.open_memmap(self.paths[name], mode="w+", dtype=np.float32,
                                                       shape=(n_clips, lengths[name], *frame_shape))
                       for name in ARRAYS}
        self.filled = 0

    def __call__(self, past: torch.Tensor, future: torch.Tensor, predicted: torch.Tensor) -> None:
        """Write one batch after the clips already written."""
        rows = slice(self.filled, self.filled + len(past))
        for name, frames in zip(ARRAYS, (past, future, predicted), strict=True):
            self.arrays[name][rows] = frames.float().numpy()
        self.filled = rows.stop

    def close(self) -> None:
        """Flush the files to disk."""
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()


def choose_protocol(config: dict, asked: str | None) -> str:
    """The protocol asked for, or the first that applies to the model; DRNetError naming why when none does."""
    problems = {name: protocol_problem(config, dataset) for name, (dataset, _) in PROTOCOLS.items()}
    if asked is not None:
        if problems[asked]:
            raise DRNetError(f"{asked} does not fit this model: {problems[asked]}")
        return asked
    for name, problem in problems.items():
        if not problem:
            return name
    mnist = problems["moving_mnist_10_to_10"]
    raise DRNetError(f"no benchmark protocol fits this {config['dataset']} model" + (
        f": {mnist}" if config["dataset"] == "mnist" else " (Moving MNIST and KTH models only)"))


def run_benchmark(checkpoint: Path, protocol: str | None, data_root: str | None, n_clips: int | None,
                  out: Path | None, device: torch.device, save_arrays: bool) -> tuple[dict, Path]:
    """Score one protocol of a pose-LSTM checkpoint, write metrics.json (and the arrays) into the output folder."""
    from engine.checkpoints import load_checkpoint, model_from_checkpoint
    from evaluation.evaluate import seeded  # the evaluation's KTH clip stream

    stored = load_checkpoint(checkpoint, map_location=device)
    if stored.get("kind") != "lstm":
        raise DRNetError(f"{checkpoint} is a DRNET checkpoint: the benchmark scores predicted frames, so pass the "
                         "pose LSTM's (lstm/checkpoint.pt after `python main.py ... --use_lstm True`)")
    config = {**stored["config"], **({"data_root": data_root} if data_root else {})}
    protocol = choose_protocol(config, protocol)
    dataset, n_future = PROTOCOLS[protocol]
    model = model_from_checkpoint(stored).to(device).eval()
    test_set = None
    if dataset == "kth":
        from datasets.registry import build_dataset

        test_set = build_dataset(config, "test")
    batches, total, source = protocol_clips(dataset, N_PAST + n_future, config, test_set, n_clips,
                                            seeded(config["seed"], "prediction"))
    out = out or checkpoint.parent / "benchmark" / protocol
    out.mkdir(parents=True, exist_ok=True)
    frame_shape = (config["channels"], config["image_width"], config["image_width"])
    results: dict = {"protocol": protocol, "checkpoint": str(checkpoint), "iteration": stored.get("iteration"),
                     "source": source, "skipped": {}}
    metrics = protocol_metrics({"psnr": FRAME_METRICS["psnr"], "ssim": ssim}, device, results["skipped"])
    arrays = ArrayFiles(out, total, n_future, frame_shape) if save_arrays else None
    try:
        scored = score_clips(model, batches, n_future, metrics, device, total, arrays, protocol)
    finally:
        if arrays is not None:
            arrays.close()
    params, flops = inference_size(model, frame_shape, n_future, device)
    results.update(scored.scores, clips=scored.clips, clips_per_second=scored.clips_per_second, params=params,
                   flops=flops, observed=N_PAST, predicted=n_future, device=str(device),
                   method="DRNET" + (" (skips)" if config["use_skip"] else ""),
                   setting=f"pose LSTM iteration {stored.get('iteration')}",
                   files=[str(path) for path in (arrays.paths.values() if arrays else ())])
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results, out


def format_row(results: dict) -> str:
    """A header naming protocol, source and clips, then the field's columns and this model's row (Markdown)."""
    cells = {"Method": results["method"], "Setting": results["setting"], "Params": f"{results['params'] / 1e6:.2f}M",
             "FLOPs": f"{results['flops'] / 1e9:.2f}G", "FPS": f"{results['clips_per_second']:.0f}",
             **{column: format(results[key], spec) if key in results else "-"
                for column, (key, spec) in ROW_SCORES.items()}}
    head = (f"{results['protocol']}: {results['observed']} -> {results['predicted']} frames, {results['clips']} clips "
            f"from {results['source']}, {results['checkpoint']} (FPS: clips per second on {results['device']})")
    return "\n".join([head, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
                      "| " + " | ".join(cells[column] for column in COLUMNS) + " |"])


def main(argv: list[str] | None = None) -> None:
    """Parse flags, score one protocol, print its row and the files written."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a pose-LSTM checkpoint (lstm/checkpoint.pt)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), help="what to score (the first that fits the model)")
    parser.add_argument("--data_root", help="where the data is (the checkpoint's --data_root)")
    parser.add_argument("--clips", type=int, help=f"Moving MNIST: the file's first N clips (all); KTH: N random "
                                                  f"test clips ({KTH_CLIPS})")
    parser.add_argument("--out", type=Path, help="folder for metrics.json and the arrays (benchmark/<protocol>/ "
                                                 "beside the checkpoint)")
    parser.add_argument("--save_arrays", type=str2bool, default=True, metavar="BOOL",
                        help="write inputs.npy, trues.npy, preds.npy (True; 4.9 GB for the whole Moving MNIST file)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="(auto)")
    args = parser.parse_args(argv)
    try:
        if args.clips is not None and args.clips < 1:
            raise DRNetError(f"--clips must be at least 1, got {args.clips}")
        results, out = run_benchmark(args.checkpoint, args.protocol, args.data_root, args.clips, args.out,
                                     resolve_device(args.device), args.save_arrays)
    except DRNetError as error:
        print(f"python -m evaluation.benchmark: error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR)
    print(format_row(results))
    for why in results["skipped"].values():
        print(f"LPIPS not scored: {why}")
    print("wrote " + ", ".join([*results["files"], str(out / "metrics.json")]))


if __name__ == "__main__":
    main()
