"""Screen pose-LSTM checkpoints by what a user sees in their roll-outs: does the digit stay, and where is it?

    python -m tools.lstm_screen runs/a/lstm/checkpoint.pt runs/b/lstm/checkpoint.pt --clips 100

For each Moving MNIST checkpoint, on the same fixed test clips: the share of roll-out frames the digit
classifier of the evaluation reads as the clip's own digits at steps 1, 10, 50 and 100 (and 200, 500 with
--steps 500), the same for the decoder fed the true future poses (the ceiling of any pose LSTM with this
DRNET), the frame MSE at those steps, the share of generated frames that faded (less than half the ink of
the true frame: a digit lost by fading rather than by turning into another), how far the generated digit is
from its true place (the median distance in pixels between the centres of ink; the decoder on true poses
beside it), and the teacher-forced pose error on test clips (held out), on training clips the run never drew
(another seed) and, from the run's metrics.csv, on the clips it trained on (its training loss over the last
100 iterations), as `main.py --evaluate` would take minutes to give. A training loss well below the error on
unseen clips means the LSTM has learned its code pool by heart. Last, the free-running pose error on the test
clips: the LSTM reads 10 true poses, then its own predictions for 90 steps, as when it generates (a run
trained with `--free_steps` reads back its predictions, so its training loss is closer to this column than to
the teacher-forced ones). Prints one Markdown row per checkpoint.

Over long roll-outs the share at one step of 100 clips is too noisy to rank checkpoints: `--window W` averages
every per-step figure over the W steps that end at the step (clipped at step 1), e.g. 300 clips over 500 frames,
the figures of steps 451-500 in the last column:

    python -m tools.lstm_screen CHECKPOINTS --clips 300 --steps 500 --seed 7 --window 50 --rollout_only

`--rollout_only` leaves out the decoder on true poses (its columns read NaN), which halves the time.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.lstm_screen", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from datasets.moving_mnist import moving_mnist
from engine.checkpoints import load_checkpoint, model_from_checkpoint
from evaluation.identity import digit_classifier, identity_curve
from models import DRNetPredictor
from tools import print_table
from train_lstm import encode_clips, pose_loss, read_back_pattern
from utils import read_metrics

STEPS = (1, 10, 50, 100, 200, 500)  # those within --steps: 500 shows whether a long roll-out keeps its digit
UNSEEN_TRAIN_SEED = 987654321  # no run's data seed: training clips that no screened run drew
CHUNK_CLIPS = 10  # clips rolled out at once: 100 clips of 500 frames at once take more memory than a laptop has
LOSS_WINDOW = 100  # iterations of training loss averaged: one batch's loss is noisy
FADED = 0.5  # a generated frame holding less than half the ink of the true one has lost its digit by fading
FREE_STEPS = 90  # poses generated for the free-running pose error: the horizon the shipped LSTM trained on


def ink_centres(frames: torch.Tensor) -> torch.Tensor:
    """The centre of ink (row, column) in pixels of each frame of (B, T, C, H, W), all channels together."""
    ink = frames.sum(2).clamp_min(0)
    weight = ink.flatten(2).sum(2).clamp_min(1e-6)
    rows = torch.arange(ink.shape[-2], dtype=ink.dtype)
    columns = torch.arange(ink.shape[-1], dtype=ink.dtype)
    return torch.stack([(ink.sum(3) * rows).sum(2) / weight, (ink.sum(2) * columns).sum(2) / weight], dim=-1)


def training_loss(path: str, iteration: int) -> float:
    """Mean training pose MSE of the LOSS_WINDOW logged iterations up to `iteration`, from the metrics.csv of
    the run a checkpoint belongs to (`lstm/checkpoint.pt` or `lstm/checkpoints/iter_N.pt`); NaN without one."""
    folder = Path(path).parent
    log = next((f for f in (folder / "metrics.csv", folder.parent / "metrics.csv") if f.is_file()), None)
    losses = [row["mse"] for row in read_metrics(log) if iteration - LOSS_WINDOW < row["iteration"] <= iteration
              ] if log else []
    return sum(losses) / len(losses) if losses else math.nan


def step_label(step: int, window: int) -> str:
    """The column suffix of a figure at `step` averaged over `window` steps: "100", or "51-100" for window 50."""
    first = max(1, step - window + 1)
    return f"{step}" if first == step else f"{first}-{step}"


def encode_in_chunks(model: DRNetPredictor, clips: torch.Tensor, n_past: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_clips` of CHUNK_CLIPS clips at a time: the encoders' activations of 300 clips of 100 frames at once
    take 12 GB."""
    parts = [encode_clips(model, part, n_past) for part in clips.split(CHUNK_CLIPS)]
    return torch.cat([content for content, _ in parts]), torch.cat([poses for _, poses in parts])


@torch.no_grad()
def screen(path: str, clips: int, steps: int, seed: int, window: int = 1,
           rollout_only: bool = False) -> dict[str, float]:
    """The identity, MSE and pose-error figures of one LSTM-stage checkpoint, each averaged over `window` steps."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint).eval()
    config, n_past, n_future = model.config, checkpoint["config"]["n_past"], checkpoint["config"]["n_future"]

    def split(name: str):
        return moving_mnist(config["data_root"], name, config["image_width"], config["channels"], config["max_step"],
                            config["num_digits"], download=False)

    test_set, train_set = split("test"), split("train")
    frames, labels = test_set.labelled_sequence_batch(clips, n_past + steps, torch.Generator().manual_seed(seed))
    classifier = digit_classifier(config["data_root"], config["image_width"], torch.device("cpu"))
    rollout, squared_error, faded = (torch.zeros(steps) for _ in range(3))
    ceiling = torch.full((steps,), math.nan if rollout_only else 0.0)  # without true poses, its columns read NaN
    distances = []
    for part, part_labels in zip(frames.split(CHUNK_CLIPS), labels.split(CHUNK_CLIPS), strict=True):
        predicted = model.predict(part[:, :n_past], steps)
        if rollout_only:
            true_poses = torch.full_like(predicted, math.nan)  # and so does the place it draws
        else:
            content = model.encode_content(part[:, n_past - 1])
            true_poses = model.decode_sequence(content, model.encode_pose_sequence(part[:, n_past:]))
            ceiling += identity_curve(classifier, true_poses, part_labels) * len(part)
        rollout += identity_curve(classifier, predicted, part_labels) * len(part)
        squared_error += (predicted - part[:, n_past:]).pow(2).flatten(2).mean(2).sum(0)
        faded += (predicted.flatten(2).sum(2) < FADED * part[:, n_past:].flatten(2).sum(2)).sum(0)
        truth = ink_centres(part[:, n_past:])
        distances.append(torch.stack([(ink_centres(drawn) - truth).norm(dim=-1) for drawn in (predicted, true_poses)]))
    distance, ceiling_distance = torch.cat(distances, dim=1).median(dim=1).values
    row = {"iteration": float(checkpoint["iteration"])}
    for step in (s for s in STEPS if s <= steps):
        steps_in = slice(max(0, step - window), step)
        label = step_label(step, window)
        row[f"identity@{label}"] = rollout[steps_in].mean().item() / clips
        row[f"true poses@{label}"] = ceiling[steps_in].mean().item() / clips
        row[f"mse@{label}"] = squared_error[steps_in].mean().item() / clips
        row[f"faded@{label}"] = faded[steps_in].mean().item() / clips
        row[f"place px@{label}"] = distance[steps_in].mean().item()
        row[f"true poses place px@{label}"] = ceiling_distance[steps_in].mean().item()
    length = n_past + n_future
    for name, dataset, data_seed in (("test", test_set, seed), ("unseen train", train_set, UNSEEN_TRAIN_SEED)):
        sequences = dataset.sequence_batch(clips, length, torch.Generator().manual_seed(data_seed))
        row[f"pose mse {name}"] = pose_loss(model.lstm, *encode_in_chunks(model, sequences, n_past)).item()
    row["pose mse trained on"] = training_loss(path, checkpoint["iteration"])
    sequences = test_set.sequence_batch(clips, n_past + FREE_STEPS, torch.Generator().manual_seed(seed))
    free = read_back_pattern(n_past + FREE_STEPS - 1, n_past, FREE_STEPS)
    row["free pose mse test"] = pose_loss(model.lstm, *encode_in_chunks(model, sequences, n_past), free).item()
    return row


def main() -> None:
    """Screen the checkpoints named on the command line and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m tools.lstm_screen", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--clips", type=int, default=100, help="test clips per checkpoint (100)")
    parser.add_argument("--steps", type=int, default=100, help="frames generated after 10 observed ones (100)")
    parser.add_argument("--seed", type=int, default=2, help="which test clips (2)")
    parser.add_argument("--window", type=int, default=1, help="steps each figure averages, ending at its step (1)")
    parser.add_argument("--rollout_only", action="store_true", help="leave out the decoder on true poses")
    args = parser.parse_args()
    if min(args.clips, args.steps, args.window) < 1:
        parser.error("--clips, --steps and --window must be at least 1")
    rows = {path: screen(path, args.clips, args.steps, args.seed, args.window, args.rollout_only)
            for path in args.checkpoints}
    print_table(rows, whole=("iteration",), digits=4)


if __name__ == "__main__":
    main()
