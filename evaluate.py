"""Evaluation of a trained checkpoint: `python main.py --evaluate [--checkpoint PATH]` (issue 4).

Everything is written to `eval/` beside the checkpoint: `metrics.json`, `summary.txt` (the table that
is also printed), `swap_examples.png` (Moving MNIST) and `prediction_curves.png` (pose LSTM). Every
random draw comes from a torch generator seeded from the evaluation seed (one stream per part, so
resizing one part never shifts another's clips) and every scikit-learn probe is deterministic, so the
same checkpoint and seed give the same numbers, bit for bit on the CPU.

metrics.json holds the run's provenance (checkpoint, kind, iteration, dataset, seed, max_step,
eval_clips, eval_steps), a `skipped` map (part -> why it did not run) and one section per part:
- reconstruction: mse, psnr, ssim of D(E_c(x_t), E_p(x_t+k)) against x_t+k (t, t+k: two random frames
  of a max_step window of a test clip); copy_content_frame_mse is the answer "x_t itself".
- swap (Moving MNIST): mse of D(E_c(A_0), E_p(B_t)) against A's digits drawn on B's trajectory at t;
  pose_frame_mse is the trivial answer B_t (right places, wrong digits), content_frame_mse the answer
  A_0 (right digits, wrong places), improvement_over_pose_frame = 1 - mse / pose_frame_mse.
- leakage: accuracy of the trained scene discriminator on test pairs (half same clip, half different
  clips; 0.5 = pose carries no clip identity) and of a fresh one trained with Adam on frozen pose
  vectors of train-split clips, on the same test pairs (fresh_discriminator_train_accuracy: on its
  own training clips, which shows whether it could learn anything at all).
- probes: logistic-regression accuracy of each clip label from the content vector (frame 0) and from
  the pose vector (a random frame t), and `<label>_chance`, the accuracy of always answering the most
  common class. Moving MNIST: `digit_<n>` is the class of digit n (drawn in colour channel n), probes
  are fitted on train-split clips and scored on test-split clips (unseen digit images); ridge R^2 of
  the digits' top-left corners from pose (at t, should be high) and from content (at frame 0, should
  be low). Datasets with clip labels (KTH, NORB, SUNCG) have identities (persons, objects) that exist
  in one split only, so their probes are fitted and scored on disjoint halves of the test clips.
  smallNORB adds the paper's Table 1 protocol (recalled; the paper's classifier may not have been linear):
  `category_new_instances_*`, the category (5 classes) of single images, fitted on train-split images
  and scored on test-split images, whose toys are other instances; content should score high, pose low.
- prediction (pose LSTM): per-step lists mse, psnr, ssim and copy_last_mse, copy_last_psnr,
  copy_last_ssim (the last observed frame repeated) for future steps 1..eval_steps from n_past frames.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datasets import ClipDataset, build_dataset
from datasets.moving_mnist import Clips, MovingMNIST
from datasets.norb import LABEL_COLUMNS as NORB_LABEL_COLUMNS
from metrics import mse, per_step, psnr, ssim
from models import DRNet, DRNetPredictor, SceneDiscriminator, load_model
from train import discriminator_pairs
from utils import DRNetError, load_checkpoint, save_image_grid

log = logging.getLogger("drnet")

EVAL_CLIPS = 1000  # test clips per part (and train clips for the fresh discriminator and probes)
EVAL_STEPS = 100  # predicted future steps
PREDICTION_CLIPS = 100  # clips rolled out by the LSTM: each decodes eval_steps frames
EVAL_BATCH = 100  # frames per network call
PREDICTION_BATCH = 10  # clips per LSTM roll-out (each holds n_past + eval_steps frames)
FRESH_STEPS, FRESH_BATCH, FRESH_LR = 300, 100, 1e-3  # the fresh scene discriminator's training
PSNR_EPS = 1e-10  # caps PSNR at 100 dB so an exact frame cannot make a mean infinite
SWAP_EXAMPLES = 8
DATA_OVERRIDES = ("data_root", "seed", "max_step")  # what evaluation may change in the stored config
STREAMS = ("test_frames", "train_frames", "swap", "pairs", "probes", "prediction", "fresh")
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-image metric: (..., C, H, W) pairs -> (...)
FRAME_METRICS: dict[str, Metric] = {"mse": mse, "psnr": partial(psnr, eps=PSNR_EPS), "ssim": ssim}


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one evaluation part, so that resizing one part never shifts another's draws."""
    return seed * len(STREAMS) + STREAMS.index(stream)


def seeded(seed: int, stream: str) -> torch.Generator:
    """A torch generator seeded for one evaluation part."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def in_batches(function: Callable[..., torch.Tensor], *inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`function` applied to aligned chunks of `inputs` moved to `device`; results concatenated on the CPU."""
    return torch.cat([function(*(x[start:start + EVAL_BATCH].to(device) for x in inputs)).cpu()
                      for start in range(0, len(inputs[0]), EVAL_BATCH)])


def content_vectors(model: DRNet, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Content vectors h_c (N, content_dim) of frames (N, C, S, S)."""
    return in_batches(lambda x: model.encode_content(x).h, frames, device=device)


def pose_vectors(model: DRNet, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pose vectors h_p (N, pose_dim) of frames (N, C, S, S)."""
    return in_batches(model.encode_pose, frames, device=device)


def mean_of(metric: Metric, pred: torch.Tensor, target: torch.Tensor) -> float:
    """A per-image metric averaged over all images."""
    return metric(pred, target).mean().item()


@torch.no_grad()
def reconstruction_metrics(model: DRNet, frames: torch.Tensor, device: torch.device) -> dict[str, float]:
    """MSE, PSNR, SSIM of D(E_c(x_t), E_p(x_t+k)) against x_t+k, for `drnet_batch` frames (4, B, C, S, S)."""
    x_content, _, x_pose, _ = frames
    rendered = in_batches(model, x_content, x_pose, device=device)
    scores = {name: mean_of(metric, rendered, x_pose) for name, metric in FRAME_METRICS.items()}
    return {**scores, "copy_content_frame_mse": mean_of(mse, x_content, x_pose)}


def swap_ground_truth(dataset: MovingMNIST, clips_a: Clips, clips_b: Clips, times: torch.Tensor) -> torch.Tensor:
    """Frames (B, K, C, S, S) of A's digits on B's trajectory at times (B, K).

    Which digit hides the other is constant over a clip, so it belongs to the content: A's order is kept.
    """
    return dataset.render(clips_a.digits, dataset.positions(clips_b, times), clips_a.front)


@torch.no_grad()
def swap_metrics(model: DRNet, dataset: MovingMNIST, n_clips: int, generator: torch.Generator,
                 device: torch.device, picture: Path | None = None) -> dict[str, float]:
    """MSE of content-from-A, pose-from-B renderings to the true swap, and of the two trivial answers."""
    clips_a, clips_b = dataset.sample_clips(n_clips, generator), dataset.sample_clips(n_clips, generator)
    times = torch.randint(dataset.max_step, (n_clips, 1), generator=generator)
    content_frames = dataset.render_clips(clips_a, torch.zeros_like(times))[:, 0]
    pose_frames = dataset.render_clips(clips_b, times)[:, 0]
    truth = swap_ground_truth(dataset, clips_a, clips_b, times)[:, 0]
    swapped = in_batches(model, content_frames, pose_frames, device=device)
    if picture is not None:  # rows: content A_0 | pose B_t | the model's swap | the true swap
        rows = torch.stack([content_frames, pose_frames, swapped, truth], dim=1)[:SWAP_EXAMPLES]
        save_image_grid(rows.flatten(0, 1), picture, columns=4)
    swap_mse, pose_frame_mse = mean_of(mse, swapped, truth), mean_of(mse, pose_frames, truth)
    return {"mse": swap_mse, "pose_frame_mse": pose_frame_mse, "content_frame_mse": mean_of(mse, content_frames, truth),
            "improvement_over_pose_frame": 1.0 - swap_mse / pose_frame_mse}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny networks train far faster without threads competing for cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def discriminator_accuracy(discriminator: SceneDiscriminator, pairs: tuple[torch.Tensor, ...]) -> float:
    """Share of (first, second, label) pairs a scene discriminator classifies right (logit > 0 = same clip)."""
    first, second, labels = pairs
    device = next(discriminator.parameters()).device
    guesses = (discriminator(first.to(device), second.to(device)) > 0).float().cpu()
    return (guesses == labels.cpu()).float().mean().item()


def train_fresh_discriminator(pose: torch.Tensor, seed: int, steps: int = FRESH_STEPS) -> SceneDiscriminator:
    """A new scene discriminator trained with Adam on frozen pose vectors (clips N, frames F >= 2, pose_dim)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # its initial weights are fixed without moving the global RNG
        torch.manual_seed(seed)
        discriminator = SceneDiscriminator(pose.shape[-1])
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=FRESH_LR)
    num_clips, num_frames = pose.shape[:2]
    batch = min(FRESH_BATCH, num_clips)
    with one_thread():
        for _ in range(steps):
            chosen = torch.randperm(num_clips, generator=generator)[:batch]
            # Two different frames of each chosen clip: the same-clip pairs vary from step to step.
            first = torch.randint(num_frames, (batch,), generator=generator)
            second = (first + torch.randint(1, num_frames, (batch,), generator=generator)) % num_frames
            h_1, h_2, labels = discriminator_pairs(pose[chosen, first], pose[chosen, second], generator)
            loss = F.binary_cross_entropy_with_logits(discriminator(h_1, h_2), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return discriminator.eval()


@torch.no_grad()
def leakage_metrics(model: DRNet, test_frames: torch.Tensor, train_frames: torch.Tensor, seed: int,
                    device: torch.device) -> dict[str, float]:
    """Scene-discriminator accuracy on test pairs: the trained one, and a fresh one fitted to frozen poses."""
    generator = seeded(seed, "pairs")
    test_pairs = discriminator_pairs(pose_vectors(model, test_frames[2], device),
                                     pose_vectors(model, test_frames[3], device), generator)
    train_pose = torch.stack([pose_vectors(model, frames, device) for frames in train_frames], dim=1)
    with torch.enable_grad():
        fresh = train_fresh_discriminator(train_pose, stream_seed(seed, "fresh"))
    train_pairs = discriminator_pairs(train_pose[:, 0], train_pose[:, 1], generator)
    return {"trained_discriminator_accuracy": discriminator_accuracy(model.scene_discriminator, test_pairs),
            "fresh_discriminator_accuracy": discriminator_accuracy(fresh, test_pairs),
            "fresh_discriminator_train_accuracy": discriminator_accuracy(fresh, train_pairs)}


class ProbeData(NamedTuple):
    """Frozen features of clips and what the probes should read from them."""

    content: torch.Tensor  # (N, content_dim) of frame 0
    pose: torch.Tensor  # (N, pose_dim) of frame t, random per clip
    labels: dict[str, torch.Tensor]  # name -> (N,) class of each clip
    content_positions: torch.Tensor | None  # (N, 2 * digits) top-left corners at frame 0 (Moving MNIST)
    pose_positions: torch.Tensor | None  # (N, 2 * digits) top-left corners at frame t (Moving MNIST)


@torch.no_grad()
def mnist_probe_data(model: DRNet, dataset: MovingMNIST, n_clips: int, generator: torch.Generator,
                     device: torch.device) -> ProbeData:
    """Content of frame 0 and pose of a random frame t of new clips, the digits' classes and positions."""
    clips = dataset.sample_clips(n_clips, generator)
    later = torch.randint(dataset.max_step, (n_clips, 1), generator=generator)
    times = torch.cat([torch.zeros_like(later), later], dim=1)
    frames = dataset.render_clips(clips, times)
    positions = dataset.positions(clips, times).float()  # (N, D, 2 times, 2 coordinates)
    labels = {f"digit_{n}": dataset.labels[clips.digits[:, n]] for n in range(dataset.num_digits)}
    return ProbeData(content_vectors(model, frames[:, 0], device), pose_vectors(model, frames[:, 1], device),
                     labels, positions[:, :, 0].flatten(1), positions[:, :, 1].flatten(1))


@torch.no_grad()
def labelled_probe_data(model: DRNet, dataset: ClipDataset, n_clips: int, length: int, generator: torch.Generator,
                        device: torch.device) -> ProbeData:
    """Content of frame 0 and pose of a random frame of clips from a loader that labels its clips."""
    frames, labels = dataset.sequence_batch(n_clips, length, generator, return_labels=True)
    later = torch.randint(length, (n_clips,), generator=generator)
    names = getattr(importlib.import_module(type(dataset).__module__), "LABEL_COLUMNS", None)
    names = names or [f"label_{i}" for i in range(labels.shape[1])]
    return ProbeData(content_vectors(model, frames[:, 0], device),
                     pose_vectors(model, frames[torch.arange(n_clips), later], device),
                     {name: labels[:, i] for i, name in enumerate(names)}, None, None)


def split_probe_data(data: ProbeData) -> tuple[ProbeData, ProbeData]:
    """The first and second half of the clips, for fitting and scoring probes on disjoint clips."""
    half = len(data.content) // 2
    parts = [slice(None, half), slice(half, None)]
    return tuple(ProbeData(data.content[part], data.pose[part], {k: v[part] for k, v in data.labels.items()},
                           None, None) for part in parts)


def linear_probe_accuracy(fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor,
                          score_y: torch.Tensor) -> float:
    """Test accuracy of a logistic regression on standardised features fitted to (fit_x, fit_y)."""
    if len(torch.unique(fit_y)) < 2:  # one class only: the probe can do no better than answering it
        return (score_y == fit_y[0]).float().mean().item()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    probe.fit(fit_x.double().numpy(), fit_y.numpy())
    return float(probe.score(score_x.double().numpy(), score_y.numpy()))


def linear_probe_r2(fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor, score_y: torch.Tensor) -> float:
    """Test R^2 (averaged over target columns) of a ridge regression on standardised features."""
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    probe.fit(fit_x.double().numpy(), fit_y.double().numpy())
    return float(probe.score(score_x.double().numpy(), score_y.double().numpy()))


def majority_accuracy(fit_y: torch.Tensor, score_y: torch.Tensor) -> float:
    """Accuracy of always answering the most common class of the fitting labels: the chance level."""
    values, counts = torch.unique(fit_y, return_counts=True)
    return (score_y == values[counts.argmax()]).float().mean().item()


def probe_metrics(fit: ProbeData, score: ProbeData) -> dict[str, float]:
    """Label accuracies from content and from pose (with chance), and position R^2 when positions exist."""
    results = {}
    for name, labels in fit.labels.items():
        results[f"{name}_from_content"] = linear_probe_accuracy(fit.content, labels, score.content,
                                                                score.labels[name])
        results[f"{name}_from_pose"] = linear_probe_accuracy(fit.pose, labels, score.pose, score.labels[name])
        results[f"{name}_chance"] = majority_accuracy(labels, score.labels[name])
    if fit.pose_positions is not None:
        results["position_r2_from_pose"] = linear_probe_r2(fit.pose, fit.pose_positions, score.pose,
                                                           score.pose_positions)
        results["position_r2_from_content"] = linear_probe_r2(fit.content, fit.content_positions, score.content,
                                                              score.content_positions)
    return results


@torch.no_grad()
def norb_category_probe(model: DRNet, train_set: ClipDataset, test_set: ClipDataset, n_images: int,
                        generator: torch.Generator, device: torch.device) -> dict[str, float]:
    """Category of single smallNORB images from content and from pose: fitted on train, scored on test toys."""
    fit_and_score = []
    for dataset in (train_set, test_set):
        frames, labels = dataset.sequence_batch(n_images, 1, generator, return_labels=True)
        images = frames[:, 0]
        category = labels[:, NORB_LABEL_COLUMNS.index("category")]
        fit_and_score.append(ProbeData(content_vectors(model, images, device), pose_vectors(model, images, device),
                                       {"category_new_instances": category}, None, None))
    return probe_metrics(*fit_and_score)


def probe_sets(model: DRNet, train_set: ClipDataset, test_set: ClipDataset, n_clips: int, max_step: int,
               generator: torch.Generator, device: torch.device) -> tuple[ProbeData, ProbeData] | None:
    """(fit, score) features for the probes, or None when the dataset has no labels to probe."""
    if isinstance(test_set, MovingMNIST):
        return (mnist_probe_data(model, train_set, n_clips, generator, device),
                mnist_probe_data(model, test_set, n_clips, generator, device))
    if "return_labels" in inspect.signature(test_set.sequence_batch).parameters:
        return split_probe_data(labelled_probe_data(model, test_set, 2 * n_clips, max_step, generator, device))
    return None


@torch.no_grad()
def prediction_metrics(model: DRNetPredictor, dataset: ClipDataset, n_clips: int, n_past: int, n_future: int,
                       generator: torch.Generator, device: torch.device) -> dict[str, list[float]]:
    """Per-step MSE, PSNR, SSIM of `model.predict` over future steps 1..n_future, and of copying the last frame."""
    totals = {prefix + name: torch.zeros(n_future, dtype=torch.float64)
              for prefix in ("", "copy_last_") for name in FRAME_METRICS}
    for start in range(0, n_clips, PREDICTION_BATCH):
        size = min(PREDICTION_BATCH, n_clips - start)
        clips = dataset.sequence_batch(size, n_past + n_future, generator)
        past, future = clips[:, :n_past], clips[:, n_past:]
        predicted = model.predict(past.to(device), n_future).cpu()
        copy_last = past[:, -1:].expand_as(future)
        for name, metric in FRAME_METRICS.items():  # chunk means weighted by chunk size: the mean over clips
            totals[name] += per_step(metric, predicted, future).double() * size
            totals["copy_last_" + name] += per_step(metric, copy_last, future).double() * size
    return {name: (total / n_clips).tolist() for name, total in totals.items()}


def plot_prediction_curves(prediction: dict[str, list[float]], path: Path) -> None:
    """Save MSE, PSNR and SSIM per future step, the model against the copy-last-frame baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FRAME_METRICS), figsize=(4.2 * len(FRAME_METRICS), 3.4))
    steps = np.arange(1, len(prediction["mse"]) + 1)
    for ax, name in zip(axes, FRAME_METRICS, strict=True):
        ax.plot(steps, prediction[name], label="pose LSTM")
        ax.plot(steps, prediction["copy_last_" + name], label="copy last frame", linestyle="--")
        ax.set_title(name.upper())
        ax.set_xlabel("future step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(results: dict) -> str:
    """The metrics as a readable text table: value, and the reference it should be compared with."""
    rows = []

    def add(part: str, what: str, value: float, reference: str = "") -> None:
        rows.append(f"{part:<15}{what:<38}{value:>10.4f}  {reference}")

    rec = results["reconstruction"]
    add("reconstruction", "MSE", rec["mse"], f"copy x_t: {rec['copy_content_frame_mse']:.4f}")
    add("reconstruction", "PSNR (dB)", rec["psnr"])
    add("reconstruction", "SSIM", rec["ssim"])
    if "swap" in results:
        swap = results["swap"]
        add("swap", "MSE to true swap", swap["mse"], f"B's frame: {swap['pose_frame_mse']:.4f}, "
                                                     f"A's frame: {swap['content_frame_mse']:.4f}")
        add("swap", "MSE reduction vs B's frame (%)", 100 * swap["improvement_over_pose_frame"])
    for name, value in results["leakage"].items():
        add("leakage", name.replace("_", " "), value, "chance 0.5")
    for name, value in results.get("probes", {}).items():
        if not name.endswith("_chance"):
            label = name.rsplit("_from_", 1)[0]
            chance = results["probes"].get(f"{label}_chance")
            add("probes", name.replace("_", " "), value, f"chance {chance:.4f}" if chance is not None else "")
    prediction = results.get("prediction", {})
    n_steps = len(prediction.get("mse", []))
    for step in sorted({1, 10, n_steps} & set(range(1, n_steps + 1))):
        for name in FRAME_METRICS:
            add("prediction", f"{name.upper()} at step {step}", prediction[name][step - 1],
                    f"copy last: {prediction['copy_last_' + name][step - 1]:.4f}")
    head = (f"DRNET evaluation of {results['checkpoint']} (iteration {results['iteration']}, {results['dataset']}, "
            f"{results['eval_clips']} clips, seed {results['seed']})")
    skipped = [f"skipped {part}: {why}" for part, why in results["skipped"].items()]
    return "\n".join([head, f"{'part':<15}{'metric':<38}{'value':>10}  reference", *rows, *skipped])


def evaluate(checkpoint: str | Path, overrides: dict, device: torch.device) -> dict:
    """Evaluate a checkpoint, write eval/ beside it, print the table, and return the metrics.

    `overrides` may set data_root, seed, max_step (else the checkpoint's) and eval_clips, eval_steps (else
    EVAL_CLIPS, EVAL_STEPS); None means unset.
    """
    checkpoint = Path(checkpoint)
    stored = load_checkpoint(checkpoint)
    config = {**stored["config"], **{k: overrides[k] for k in DATA_OVERRIDES if overrides.get(k) is not None}}
    n_clips = EVAL_CLIPS if overrides.get("eval_clips") is None else overrides["eval_clips"]
    n_steps = EVAL_STEPS if overrides.get("eval_steps") is None else overrides["eval_steps"]
    if n_clips < 2 or n_steps < 1:
        raise DRNetError(f"--eval_clips must be at least 2 (pairs of clips) and --eval_steps at least 1, "
                         f"got {n_clips} and {n_steps}")
    model = load_model(checkpoint, device)
    out_dir = checkpoint.parent / "eval"
    out_dir.mkdir(exist_ok=True)
    seed = config["seed"]
    results = {"checkpoint": str(checkpoint), "kind": stored.get("kind", "drnet"), "iteration": stored.get("iteration"),
               "dataset": config["dataset"], "seed": seed, "max_step": config["max_step"], "eval_clips": n_clips,
               "eval_steps": n_steps, "skipped": {}}
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")

    test_frames = test_set.drnet_batch(n_clips, seeded(seed, "test_frames"))
    results["reconstruction"] = reconstruction_metrics(model, test_frames, device)
    if isinstance(test_set, MovingMNIST):
        results["swap"] = swap_metrics(model, test_set, n_clips, seeded(seed, "swap"), device,
                                       out_dir / "swap_examples.png")
    else:
        results["skipped"]["swap"] = f"no ground-truth swaps for {config['dataset']}"
    train_frames = train_set.drnet_batch(n_clips, seeded(seed, "train_frames"))
    results["leakage"] = leakage_metrics(model, test_frames, train_frames, seed, device)
    probes_generator = seeded(seed, "probes")
    probes = probe_sets(model, train_set, test_set, n_clips, config["max_step"], probes_generator, device)
    if probes is not None:
        results["probes"] = probe_metrics(*probes)
        if config["dataset"] == "norb":  # part of the probes: its draws follow theirs on the same stream
            results["probes"].update(norb_category_probe(model, train_set, test_set, n_clips, probes_generator,
                                                         device))
    else:
        results["skipped"]["probes"] = f"the {config['dataset']} loader gives no labels"
    if hasattr(model, "predict"):
        try:
            results["prediction"] = prediction_metrics(model, test_set, min(n_clips, PREDICTION_CLIPS),
                                                       config["n_past"], n_steps, seeded(seed, "prediction"), device)
            plot_prediction_curves(results["prediction"], out_dir / "prediction_curves.png")
        except DRNetError as error:  # finite datasets (KTH) may hold no clip of n_past + eval_steps frames
            results["skipped"]["prediction"] = str(error)
    else:
        results["skipped"]["prediction"] = "the checkpoint has no pose LSTM"

    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(results)
    (out_dir / "summary.txt").write_text(table + "\n")
    print(table)  # the table is the command's output; progress and errors go to the log (stderr)
    log.info("evaluation written to %s", out_dir)
    return results
