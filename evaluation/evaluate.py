"""Evaluation of a trained checkpoint: `python main.py --evaluate [--checkpoint PATH]`.

Everything is written to `--eval_dir` (default `eval/` beside the checkpoint): `metrics.json`,
`summary.txt` (the table that is also printed), `swap_examples.png` (Moving MNIST) and
`prediction_curves.png` (pose LSTM). Long parts show a progress bar on a terminal. Every
random draw comes from a torch generator seeded from the evaluation seed (one stream per part, so
resizing one part never shifts another's clips) and every scikit-learn probe is deterministic, so the
same checkpoint and seed give the same numbers, bit for bit on the CPU.

metrics.json holds the run's provenance (checkpoint, kind, iteration, dataset, seed, max_step,
eval_clips, eval_steps, prediction_clips: the clips rolled out, at most PREDICTION_CLIPS), a `skipped` map
(part -> why it did not run) and one section per part:
- swap (Moving MNIST): swap_mse is the error of D(E_c(A_0), E_p(B_t)) against A's digits
  drawn on B's trajectory at t; swap_mse_other_content the same with the content of a third clip C,
  swap_mse_mean_content with the mean content, swap_mse_pose_frame the trivial answer B_t (right places,
  wrong digits). content_transfer = 1 - swap_mse / swap_mse_other_content: 0 when the decoder ignores its
  content (a good-looking reconstruction can come from the pose alone), towards 1 as it relies on it.
- content: invariance_ratio, the within-clip share of the variance of the content vectors of two frames of
  the same test clips (scale-free: 0 when the content never changes within a clip while clips differ, 1
  when it holds nothing of the clip); spread, their mean standard deviation across clips, and bn_scale, the
  mean |gamma| of the content head's BatchNorm when it has one: both fall when the content shrinks,
  whatever it holds.
- reconstruction: mse, psnr, ssim of D(E_c(x_t), E_p(x_t+k)) against x_t+k (t, t+k: two random frames
  of a max_step window of a test clip); copy_content_frame_mse is the answer "x_t itself".
- leakage: accuracy of the trained scene discriminator on test pairs (half same clip, half different
  clips) and of a fresh one trained with Adam on frozen pose vectors of train-split clips, on the same test
  pairs (fresh_discriminator_train_accuracy: on its own training clips, which shows whether it learnt at
  all). On Moving MNIST, position_only_discriminator_accuracy is a fresh one trained and tested the same way
  on the digits' true positions in the same frames: what a pose holding the positions and nothing else
  scores, since two nearby frames of one clip have nearby positions. That, not 0.5, is the reference.
- probes: linear probes of the frozen vectors (accuracy beside chance).
- identity (Moving MNIST): a digit classifier trained on the training digits only (cached under
  the data root) reads each digit of a frame. swap gains swap_identity (the model's swaps read as A's digits),
  swap_identity_other_content (the renderings with C's content read as A's digits: the same share for a decoder
  that ignores its content), swap_identity_pose_donor (the model's swaps read as B's digits) and
  swap_identity_truth (the true swaps: the ceiling); prediction gains per-step lists identity (the LSTM's
  frames read as the clip's digits), true_pose_identity and ground_truth_identity (the true future frames);
  identity_classifier holds the classifier's accuracy on the test digits, each rendered alone.
- prediction (pose LSTM): per-step lists mse, psnr, ssim for future steps 1..eval_steps from n_past frames;
  true_pose_* the decoder fed the encoded poses of the true future frames (content of the last observed
  frame, as predict does): the error left if the LSTM predicted every pose exactly; copy_last_* the last
  observed frame repeated.
- benchmark (pose LSTM): the field's tables (Moving MNIST 10 -> 10 on the standard file, KTH 10 -> 20 and 10 -> 40)
  in their units, with a `skipped` map of its own.
On Moving MNIST every frame error is taken over the digit channels only (transfer.digit_channels): with two
digits the third colour channel is always empty and would dilute every error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets import ClipDataset
from datasets.moving_mnist import DIGIT_SIZE, MovingMNIST
from datasets.registry import build_dataset
from engine.checkpoints import load_checkpoint, model_from_checkpoint
from engine.pictures import save_image_grid
from evaluation.benchmark import benchmark_results
from evaluation.identity import DigitClassifier, check_readable, digit_classifier, identity_curve, swap_identity
from evaluation.metrics import FRAME_METRICS, Metric, mse, per_step
from evaluation.probes import NothingToProbe, content_vectors, in_batches, pose_vectors, probe_results
from evaluation.report import ANSWERS, IDENTITY_CURVES, format_table, plot_prediction_curves
from evaluation.transfer import digit_channels, invariance_ratio, swap_renderings, swap_set, transfer_errors
from models import DRNet, DRNetPredictor, SceneDiscriminator, discriminator_pairs
from utils import DRNetError

log = logging.getLogger("drnet")

EVAL_CLIPS = 1000  # test clips per part (and train clips for the fresh discriminators and probes)
EVAL_STEPS = 100  # predicted future steps
PREDICTION_CLIPS = 100  # clips rolled out by the LSTM: each decodes eval_steps frames
PREDICTION_BATCH = 10  # clips per LSTM roll-out (each holds n_past + eval_steps frames)
# The fresh scene discriminators' training: enough steps for a small MLP to converge on 1000 clips.
FRESH_STEPS, FRESH_BATCH, FRESH_LR = 1500, 100, 1e-3
SWAP_EXAMPLES = 8
DATA_OVERRIDES = ("data_root", "seed", "max_step")  # what evaluation may change in the stored config
STREAMS = ("test_frames", "train_frames", "swap", "pairs", "train_pairs", "probes", "prediction", "fresh")


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one evaluation part, so that resizing one part never shifts another's draws."""
    return seed * len(STREAMS) + STREAMS.index(stream)


def seeded(seed: int, stream: str) -> torch.Generator:
    """A torch generator seeded for one evaluation part."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def mean_of(metric: Metric, pred: torch.Tensor, target: torch.Tensor) -> float:
    """A per-image metric averaged over all images."""
    return metric(pred, target).mean().item()


class LeakageFrames(NamedTuple):
    """Four frames of each of N clips, as drnet_batch draws them, and on Moving MNIST where their digits are."""

    frames: torch.Tensor  # (4, N, C, S, S)
    positions: torch.Tensor | None  # (4, N, 2 * digits) top-left corners scaled to [-1, 1] (Moving MNIST)


def leakage_frames(dataset: ClipDataset, n_clips: int, generator: torch.Generator) -> LeakageFrames:
    """`dataset.drnet_batch`; on Moving MNIST drawn from known clips, so that the digits' positions come too."""
    if not isinstance(dataset, MovingMNIST):
        return LeakageFrames(dataset.drnet_batch(n_clips, generator), None)
    clips = dataset.sample_clips(n_clips, generator)  # MovingMNIST.drnet_batch's draws, in its order
    times = torch.randint(dataset.max_step, (n_clips, 4), generator=generator)
    corners = dataset.positions(clips, times).permute(2, 0, 1, 3).flatten(2).float()  # (4, N, D * 2)
    travel = max(dataset.image_size - DIGIT_SIZE, 1)  # corners lie in [0, travel]
    return LeakageFrames(dataset.render_clips(clips, times).transpose(0, 1), corners / travel * 2 - 1)


@torch.no_grad()
def reconstruction_metrics(model: DRNet, frames: torch.Tensor, channels: slice,
                           device: torch.device) -> dict[str, float]:
    """MSE, PSNR, SSIM of D(E_c(x_t), E_p(x_t+k)) against x_t+k over `channels`, for drnet_batch frames."""
    x_content, _, x_pose, _ = frames
    rendered = in_batches(model, x_content, x_pose, device=device)[:, channels]
    x_content, x_pose = x_content[:, channels], x_pose[:, channels]
    scores = {name: mean_of(metric, rendered, x_pose) for name, metric in FRAME_METRICS.items()}
    return {**scores, "copy_content_frame_mse": mean_of(mse, x_content, x_pose)}


@torch.no_grad()
def content_metrics(model: DRNet, frames: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Invariance ratio of the content vectors of frames 0 and 1 of drnet_batch clips, their spread, BN scale."""
    first, second = (content_vectors(model, x, device) for x in frames[:2])
    results = {"invariance_ratio": invariance_ratio(first, second), "spread": first.std(0).mean().item()}
    norm = model.content_encoder.head[1]
    if norm.affine:  # a learnable scale that the similarity loss can shrink (models.StagedEncoder)
        results["bn_scale"] = norm.weight.abs().mean().item()
    return results


def swap_metrics(model: DRNet, dataset: MovingMNIST, n_clips: int, generator: torch.Generator,
                 device: torch.device, picture: Path | None = None,
                 classifier: DigitClassifier | None = None) -> dict[str, float]:
    """Content transfer and its references on new clips; `picture` shows A_0 | B_t | the model's | the true swap.

    With a digit classifier, also the swaps' identity readings (identity.swap_identity).
    """
    swaps = swap_set(dataset, n_clips, generator)
    rendered = swap_renderings(model, swaps, device)
    results = transfer_errors(rendered, swaps, digit_channels(dataset))
    if picture is not None:
        rows = torch.stack([swaps.content, swaps.pose, rendered["right"], swaps.truth], dim=1)[:SWAP_EXAMPLES]
        save_image_grid(rows.flatten(0, 1), picture, columns=4)
    if classifier is not None:
        results.update(swap_identity(classifier, rendered, swaps))
    return results


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny networks train far faster without threads competing for cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def paired(first: torch.Tensor, second: torch.Tensor, seed: int, stream: str) -> tuple[torch.Tensor, ...]:
    """Scene-discriminator pairs of two frames' features; the seeded pairing is the same for any features."""
    return discriminator_pairs(first, second, seeded(seed, stream))


@torch.no_grad()
def discriminator_accuracy(discriminator: SceneDiscriminator, pairs: tuple[torch.Tensor, ...]) -> float:
    """Share of (first, second, label) pairs a scene discriminator classifies right (logit > 0 = same clip)."""
    first, second, labels = pairs
    device = next(discriminator.parameters()).device
    with torch.autocast(device.type, enabled=False):  # read in fp32 (pose vectors may come from bf16 encoders)
        guesses = (discriminator(first.to(device).float(), second.to(device).float()) > 0).float().cpu()
    return (guesses == labels.cpu()).float().mean().item()


def train_fresh_discriminator(features: torch.Tensor, seed: int, steps: int = FRESH_STEPS) -> SceneDiscriminator:
    """A new scene discriminator trained with Adam on frozen per-frame features (clips N, frames F >= 2, dim)."""
    generator = torch.Generator().manual_seed(seed)
    features = features.float()
    with torch.random.fork_rng(devices=[]):  # its initial weights are fixed without moving the global RNG
        torch.manual_seed(seed)
        discriminator = SceneDiscriminator(features.shape[-1])
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=FRESH_LR)
    num_clips, num_frames = features.shape[:2]
    batch = min(FRESH_BATCH, num_clips)
    # fp32 whatever the caller's autocast (main.py evaluates under --amp): inside one autocast context the bf16
    # copy of each weight is cast once and cached, so Adam's updates would never reach the forward pass and the
    # discriminator would answer as initialised (0.5 on every pair set, measured under --amp auto on AMX).
    with one_thread(), torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
        for _ in tqdm(range(steps), desc="fresh discriminator", disable=None, leave=False):  # on a terminal
            chosen = torch.randperm(num_clips, generator=generator)[:batch]
            # Two different frames of each chosen clip: the same-clip pairs vary from step to step.
            first = torch.randint(num_frames, (batch,), generator=generator)
            second = (first + torch.randint(1, num_frames, (batch,), generator=generator)) % num_frames
            h_1, h_2, labels = discriminator_pairs(features[chosen, first], features[chosen, second], generator)
            loss = F.binary_cross_entropy_with_logits(discriminator(h_1, h_2), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return discriminator.eval()


def fresh_discriminator_scores(name: str, train: torch.Tensor, test_first: torch.Tensor, test_second: torch.Tensor,
                               seed: int) -> dict[str, float]:
    """Test and train accuracy of a fresh discriminator fitted to features of train clips (N, F >= 2, dim).

    It is scored on pairs of two frames' features of test clips, and on frames 0 and 1 of its own clips.
    """
    fresh = train_fresh_discriminator(train, stream_seed(seed, "fresh"))
    return {f"{name}_discriminator_accuracy": discriminator_accuracy(fresh, paired(test_first, test_second, seed,
                                                                                   "pairs")),
            f"{name}_discriminator_train_accuracy": discriminator_accuracy(fresh, paired(train[:, 0], train[:, 1],
                                                                                         seed, "train_pairs"))}


@torch.no_grad()
def leakage_metrics(model: DRNet, test: LeakageFrames, train: LeakageFrames, seed: int,
                    device: torch.device) -> dict[str, float]:
    """Scene-discriminator accuracy on test pairs: the trained one, fresh ones fitted to poses and to positions."""
    test_pose = [pose_vectors(model, frames, device) for frames in test.frames[2:]]
    train_pose = torch.stack([pose_vectors(model, frames, device) for frames in train.frames], dim=1)
    results = {"trained_discriminator_accuracy": discriminator_accuracy(model.scene_discriminator,
                                                                        paired(*test_pose, seed, "pairs")),
               **fresh_discriminator_scores("fresh", train_pose, *test_pose, seed)}
    if test.positions is not None:  # the same frames, hence the same pairs, described by positions alone
        results.update(fresh_discriminator_scores("position_only", train.positions.transpose(0, 1),
                                                  *test.positions[2:], seed))
    return results


@torch.no_grad()
def decode_true_poses(model: DRNet, last_observed: torch.Tensor, future: torch.Tensor,
                      device: torch.device) -> torch.Tensor:
    """Frames (B, T, C, S, S) decoded from the true future frames' poses and the last observed frame's content."""
    content = model.encode_content(last_observed.to(device))
    return torch.stack([model.decode(content, model.encode_pose(future[:, t].to(device))).cpu()
                        for t in range(future.shape[1])], dim=1)


@torch.no_grad()
def prediction_metrics(model: DRNetPredictor, dataset: ClipDataset, n_clips: int, n_past: int, n_future: int,
                       channels: slice, generator: torch.Generator, device: torch.device,
                       classifier: DigitClassifier | None = None) -> dict[str, list[float]]:
    """Per-step MSE, PSNR, SSIM over `channels` of `model.predict`, the decoder on true poses and the last frame.

    With a digit classifier (Moving MNIST), also the per-step identity of the LSTM's frames, of the decoder's on
    true poses and of the true frames (identity.identity_curve), from the same clips.
    """
    totals = {prefix + name: torch.zeros(n_future, dtype=torch.float64) for prefix in ANSWERS for name in FRAME_METRICS}
    if classifier is not None:
        totals.update({key: torch.zeros(n_future, dtype=torch.float64) for key in IDENTITY_CURVES})
    for start in tqdm(range(0, n_clips, PREDICTION_BATCH), desc="prediction", disable=None, leave=False):
        size = min(PREDICTION_BATCH, n_clips - start)
        if classifier is None:
            clips = dataset.sequence_batch(size, n_past + n_future, generator)
        else:  # the same clips, with their digits' classes
            clips, labels = dataset.labelled_sequence_batch(size, n_past + n_future, generator)
        past, future = clips[:, :n_past], clips[:, n_past:]
        answers = {"": model.predict(past.to(device), n_future).cpu(),
                   "true_pose_": decode_true_poses(model, past[:, -1], future, device),
                   "copy_last_": past[:, -1:].expand_as(future)}
        target = future[:, :, channels]
        for prefix, answer in answers.items():
            for name, metric in FRAME_METRICS.items():  # chunk means weighted by chunk size: the mean over clips
                totals[prefix + name] += per_step(metric, answer[:, :, channels], target).double() * size
        if classifier is not None:
            for key, frames in zip(IDENTITY_CURVES, (answers[""], answers["true_pose_"], future), strict=True):
                totals[key] += identity_curve(classifier, frames, labels).double() * size
    return {name: (total / n_clips).tolist() for name, total in totals.items()}


def evaluate(checkpoint: str | Path, overrides: dict, device: torch.device, stored: dict | None = None,
             out_dir: str | Path | None = None) -> dict:
    """Evaluate a checkpoint, write `out_dir` (default eval/ beside it), print the table, and return the metrics.

    `overrides` may set data_root, seed, max_step (else the checkpoint's) and eval_clips, eval_steps (else
    EVAL_CLIPS, EVAL_STEPS); None means unset. `stored` is the checkpoint already loaded, if it is.
    """
    began = time.perf_counter()
    checkpoint = Path(checkpoint)
    stored = load_checkpoint(checkpoint) if stored is None else stored
    config = {**stored["config"], **{k: overrides[k] for k in DATA_OVERRIDES if overrides.get(k) is not None}}
    n_clips = EVAL_CLIPS if overrides.get("eval_clips") is None else overrides["eval_clips"]
    n_steps = EVAL_STEPS if overrides.get("eval_steps") is None else overrides["eval_steps"]
    if n_clips < 2 or n_steps < 1:
        raise DRNetError(f"--eval_clips must be at least 2 (pairs of clips) and --eval_steps at least 1, "
                         f"got {n_clips} and {n_steps}")
    model = model_from_checkpoint(stored).to(device).eval()
    out_dir = checkpoint.parent / "eval" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = config["seed"]
    results = {"checkpoint": str(checkpoint), "kind": stored.get("kind", "drnet"), "iteration": stored.get("iteration"),
               "dataset": config["dataset"], "seed": seed, "max_step": config["max_step"], "eval_clips": n_clips,
               "eval_steps": n_steps, "prediction_clips": min(n_clips, PREDICTION_CLIPS), "skipped": {}}
    train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
    mnist = isinstance(test_set, MovingMNIST)
    channels = digit_channels(test_set) if mnist else slice(None)

    classifier = None
    if mnist:
        try:  # its own training draws from a generator of its own: no evaluation stream moves
            check_readable(test_set.channels, test_set.num_digits)
            with one_thread():  # trained once per data root and image size, then read from its cache
                classifier = digit_classifier(config["data_root"], config["image_width"], device)
            results["identity_classifier"] = {"test_accuracy": classifier.test_accuracy,
                                              "trained_on": classifier.trained_on}
        except DRNetError as error:
            results["skipped"]["identity"] = str(error)
        results["swap"] = swap_metrics(model, test_set, n_clips, seeded(seed, "swap"), device,
                                       out_dir / "swap_examples.png", classifier)
    else:
        results["skipped"]["swap"] = f"no ground-truth swaps for {config['dataset']}"
        results["skipped"]["identity"] = f"no digits to read in {config['dataset']}: identity is a Moving MNIST metric"
    test = leakage_frames(test_set, n_clips, seeded(seed, "test_frames"))
    results["content"] = content_metrics(model, test.frames, device)
    results["reconstruction"] = reconstruction_metrics(model, test.frames, channels, device)
    train = leakage_frames(train_set, n_clips, seeded(seed, "train_frames"))
    results["leakage"] = leakage_metrics(model, test, train, seed, device)
    try:
        results["probes"] = probe_results(model, train_set, test_set, n_clips, seeded(seed, "probes"), device)
    except NothingToProbe as reason:
        results["skipped"]["probes"] = str(reason)
    if hasattr(model, "predict"):
        try:
            results["prediction"] = prediction_metrics(model, test_set, min(n_clips, PREDICTION_CLIPS),
                                                       config["n_past"], n_steps, channels,
                                                       seeded(seed, "prediction"), device, classifier)
            plot_prediction_curves(results["prediction"], out_dir / "prediction_curves.png")
        except DRNetError as error:  # finite datasets (KTH) may hold no clip of n_past + eval_steps frames
            results["skipped"]["prediction"] = str(error)
        # Its KTH clips come from a generator of their own seeded as the prediction part's: a new stream would
        # change stream_seed for every other part.
        results["benchmark"] = benchmark_results(model, config, test_set, n_clips, seeded(seed, "prediction"),
                                                 FRAME_METRICS, device)
    else:
        results["skipped"]["prediction"] = "the checkpoint has no pose LSTM"

    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(results)
    (out_dir / "summary.txt").write_text(table + "\n")
    print(table)  # the table is the command's output; progress and errors go to the log (stderr)
    log.info("evaluation written to %s (%.0f s)", out_dir, time.perf_counter() - began)
    return results
