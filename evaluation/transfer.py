"""Does the decoder use the content? Content transfer and content invariance, measured on Moving MNIST.

A decoder can render good reconstructions from the pose alone (blobs on the right trajectories) while
ignoring the content vector; reconstruction error and the raw spread of the content vector do not show
it. Content transfer does: render A's content in B's pose and compare it with the ground truth (A's
digits drawn on B's trajectory), next to the same rendering with the content of a third clip C and with
the mean content. A decoder that ignores its content gets the same error for all three, so

    content_transfer = 1 - mse(right content) / mse(other clip's content)

is 0 for it, and approaches 1 as the right content becomes necessary. Errors are taken over the digit
channels only: with 2 digits the third colour channel of a frame is always empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from datasets.moving_mnist import Clips, MovingMNIST
from evaluation.metrics import mse
from models import Content, DRNet

CHUNK = 100  # frames per network call


class SwapSet(NamedTuple):
    """Frames for a content-transfer test: contents of A and C, poses of B, and the true A-in-B's-pose."""

    content: torch.Tensor  # (N, C, S, S) A at frame 0
    other_content: torch.Tensor  # (N, C, S, S) a third clip C at frame 0
    pose: torch.Tensor  # (N, C, S, S) B at frame t
    truth: torch.Tensor  # (N, C, S, S) A's digits on B's trajectory at t, A's digit in front
    content_labels: torch.Tensor  # (N, D) the classes of A's digits
    other_labels: torch.Tensor  # (N, D) C's
    pose_labels: torch.Tensor  # (N, D) B's


def swap_ground_truth(dataset: MovingMNIST, clips_a: Clips, clips_b: Clips, times: torch.Tensor) -> torch.Tensor:
    """Frames (B, K, C, S, S) of A's digits on B's trajectory at times (B, K).

    Which digit hides the other is constant over a clip, so it belongs to the content: A's order is kept.
    """
    return dataset.render(clips_a.digits, dataset.positions(clips_b, times), clips_a.front)


def swap_set(dataset: MovingMNIST, n_clips: int, generator: torch.Generator) -> SwapSet:
    """Draw clips A, B, C and a time t in B's first `max_step` frames; render the four sets of frames."""
    clips_a, clips_b, clips_c = (dataset.sample_clips(n_clips, generator) for _ in range(3))
    times = torch.randint(dataset.max_step, (n_clips, 1), generator=generator)
    start = torch.zeros_like(times)
    truth = swap_ground_truth(dataset, clips_a, clips_b, times)[:, 0]
    return SwapSet(dataset.render_clips(clips_a, start)[:, 0], dataset.render_clips(clips_c, start)[:, 0],
                   dataset.render_clips(clips_b, times)[:, 0], truth,
                   *(dataset.labels[clips.digits] for clips in (clips_a, clips_c, clips_b)))


def digit_channels(dataset: MovingMNIST) -> slice:
    """The colour channels that can hold ink: one per digit (all of them for grey frames)."""
    return slice(None, dataset.num_digits if dataset.channels > 1 else None)


def mean_content(contents: list[Content]) -> Content:
    """The content vector and skip maps averaged over every frame of `contents` (a list of chunks)."""
    count = sum(len(c.h) for c in contents)
    h = sum(c.h.sum(0) for c in contents) / count
    skips = [sum(c.skips[i].sum(0) for c in contents) / count for i in range(len(contents[0].skips))]
    return Content(h[None], [s[None] for s in skips])


@torch.no_grad()
def swap_renderings(model: DRNet, swaps: SwapSet, device: torch.device) -> dict[str, torch.Tensor]:
    """B's poses rendered (N, C, S, S, on the CPU) with A's content ("right"), C's ("other"), the mean ("mean")."""
    chunks = range(0, len(swaps.pose), CHUNK)

    def encode(frames: torch.Tensor) -> list[Content]:
        return [model.encode_content(frames[i:i + CHUNK].to(device)) for i in chunks]

    contents, others = encode(swaps.content), encode(swaps.other_content)
    poses = [model.encode_pose(swaps.pose[i:i + CHUNK].to(device)) for i in chunks]
    average = mean_content(contents)
    rendered = {"right": [], "other": [], "mean": []}
    for content, other, pose in zip(contents, others, poses, strict=True):
        rendered["right"].append(model.decode(content, pose).cpu())
        rendered["other"].append(model.decode(other, pose).cpu())
        rendered["mean"].append(model.decode(average.expand(len(pose)), pose).cpu())
    return {name: torch.cat(frames) for name, frames in rendered.items()}


def transfer_errors(rendered: dict[str, torch.Tensor], swaps: SwapSet, channels: slice) -> dict[str, float]:
    """Swap errors over `channels` of `swap_renderings`, and content_transfer = 1 - right / other clip."""
    truth = swaps.truth[:, channels]
    errors = {name: mse(frames[:, channels], truth).mean().item() for name, frames in rendered.items()}
    return {"content_transfer": 1.0 - errors["right"] / errors["other"], "swap_mse": errors["right"],
            "swap_mse_other_content": errors["other"], "swap_mse_mean_content": errors["mean"],
            "swap_mse_pose_frame": mse(swaps.pose[:, channels], truth).mean().item()}


def content_transfer(model: DRNet, swaps: SwapSet, channels: slice, device: torch.device,
                     keep: Callable[[torch.Tensor], None] | None = None) -> dict[str, float]:
    """Swap errors with A's, C's and the mean content, and content_transfer = 1 - right / other clip.

    `keep`, when given, receives the renderings with the right content (N, C, S, S) on the CPU.
    """
    rendered = swap_renderings(model, swaps, device)
    if keep is not None:
        keep(rendered["right"])
    return transfer_errors(rendered, swaps, channels)


def invariance_ratio(first: torch.Tensor, second: torch.Tensor) -> float:
    """Within-clip share of a code's variance, from two frames' vectors (N, dim) of each of N clips.

    The within-clip variance (half the mean squared difference of a clip's two vectors) over the total
    variance of all 2N vectors. Scale-free: shrinking the code (a smaller BatchNorm scale) leaves it
    unchanged. 0: the code never changes over time while clips differ; 1: it holds nothing of the clip.
    """
    within = (first - second).pow(2).mean() / 2
    total = torch.cat([first, second]).var(0).mean()
    return (within / total.clamp_min(1e-12)).item()
