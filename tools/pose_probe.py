"""How much do a DRNET's pose vectors say about where the digits are and how fast they move?

    python -m tools.pose_probe saved_results/pose_lstm_mnist_fp16.pt --clips 1000

Moving MNIST digits move by whole pixels per frame (1 to 4 along each axis, as in the authors' Lua generator),
so 10 observed frames fix a digit's velocity if its pose vectors give its place to about a pixel. A probe (a
small MLP, trained here on the training digits' clips) reads the top-left corners of the digits from the pose
vectors; on test clips it reports how far off the probe's places are, and how well a straight-line fit to the
places of the observed frames gives each velocity (only axes that do not bounce in the frames fitted): the
error of the fit in px per frame and the share of fits that round to the true velocity. A pose LSTM that drifts
by about the unrounded fit's error every frame (`tools/lstm_screen.py` measures the drift as the place error
per step) reads the velocity no better than a straight line does, however well its poses could have fixed it.
Takes a DRNET or an LSTM-stage checkpoint (its DRNET is probed). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.pose_probe", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from datasets.moving_mnist import moving_mnist
from engine.checkpoints import load_checkpoint, model_from_checkpoint
from models import DRNet
from tools import print_table
from utils import DRNetError

TRAIN_FRAMES = 20  # frames per training clip of the probe: as many as a DRNET's clips hold
PROBE_WIDTH = 256
PROBE_BATCH = 512
ENCODE_CHUNK = 50  # clips encoded at once


def clip_codes(model: DRNet, dataset, clips: int, frames: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Pose vectors (B, T, P), top-left corners of the digits (B, T, 2D) and velocities (B, 2D) of new clips."""
    sampled = dataset.sample_clips(clips, torch.Generator().manual_seed(seed))
    times = torch.arange(frames).expand(clips, -1)
    video = dataset.render_clips(sampled, times)
    with torch.no_grad():
        poses = torch.cat([model.encode_pose(part.flatten(0, 1)).unflatten(0, part.shape[:2])
                           for part in video.split(ENCODE_CHUNK)])
    corners = dataset.positions(sampled, times).float()  # (B, D, T, 2)
    return poses, corners.permute(0, 2, 1, 3).flatten(2), sampled.velocity.float().flatten(1)


def fit_probe(poses: torch.Tensor, places: torch.Tensor, iterations: int, seed: int = 0) -> nn.Module:
    """An MLP from pose vectors (N, P) to places (N, K), trained by Adam on the squared error."""
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.Linear(poses.shape[1], PROBE_WIDTH), nn.ReLU(), nn.Linear(PROBE_WIDTH, PROBE_WIDTH),
                          nn.ReLU(), nn.Linear(PROBE_WIDTH, places.shape[1]))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2 * iterations // 3], gamma=0.2)
    for _ in range(iterations):
        rows = torch.randint(len(poses), (PROBE_BATCH,))
        loss = (probe(poses[rows]) - places[rows]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return probe.eval()


def velocity_fit(places: torch.Tensor) -> torch.Tensor:
    """The least-squares slope (B, K) in px per frame of places (B, T, K) against the frame number."""
    times = torch.arange(places.shape[1], dtype=places.dtype)
    centred = times - times.mean()
    return ((places - places.mean(1, keepdim=True)) * centred[None, :, None]).sum(1) / centred.pow(2).sum()


def straight(corners: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Which axes (B, K) move at their starting velocity all through corners (B, T, K): no bounce."""
    return ((corners[:, 1:] - corners[:, :-1]) == velocity[:, None]).all(1)


def probe_checkpoint(path: str, clips: int, frames: int, iterations: int, seed: int) -> dict[str, float]:
    """The probe's figures for the DRNET of one checkpoint (DRNET or LSTM stage)."""
    checkpoint = load_checkpoint(path)
    dataset = checkpoint["config"]["dataset"]
    if dataset != "mnist":
        raise DRNetError(f"the pose probe reads Moving MNIST digits; {path} is a {dataset} model")
    model = model_from_checkpoint(checkpoint).eval()
    config = model.config

    def split(name: str):
        return moving_mnist(config["data_root"], name, config["image_width"], config["channels"], config["max_step"],
                            config["num_digits"], download=False)

    train_poses, train_places, _ = clip_codes(model, split("train"), clips, TRAIN_FRAMES, seed)
    probe = fit_probe(train_poses.flatten(0, 1), train_places.flatten(0, 1), iterations, seed)
    poses, places, velocity = clip_codes(model, split("test"), clips, frames, seed + 1)
    with torch.no_grad():
        read = probe(poses)
    error = read - places
    row = {"place rms px": error.pow(2).mean().sqrt().item(), "place median px": error.abs().median().item()}
    fitted, keep = velocity_fit(read), straight(places, velocity)
    row["velocity rms px/frame"] = (fitted - velocity)[keep].pow(2).mean().sqrt().item()
    row["velocity rounds right"] = (fitted.round() == velocity)[keep].float().mean().item()
    row["axes fitted"] = keep.sum().item()
    return row


def main() -> None:
    """Probe the checkpoints named on the command line and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m tools.pose_probe", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--clips", type=int, default=1000, help="training clips for the probe, and test clips (1000)")
    parser.add_argument("--frames", type=int, default=10, help="observed frames a velocity is fitted to (10)")
    parser.add_argument("--iterations", type=int, default=3000, help="training iterations of the probe (3000)")
    parser.add_argument("--seed", type=int, default=11, help="which clips, and the probe's initialisation (11)")
    args = parser.parse_args()
    try:
        rows = {path: probe_checkpoint(path, args.clips, args.frames, args.iterations, args.seed)
                for path in args.checkpoints}
    except DRNetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_table(rows, whole=("axes fitted",), digits=3)


if __name__ == "__main__":
    main()
