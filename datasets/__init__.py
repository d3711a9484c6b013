"""Dataset registry: each dataset's loader, architectures and default hyper-parameters (SPEC §4).

A loader returns clips of one split with two methods, the only ones training needs:
`drnet_batch(batch_size, generator) -> (4, B, C, S, S)` (x_c1, x_c2, x_p1, x_p2 of one clip each) and
`sequence_batch(batch_size, length, generator) -> (B, T, C, S, S)`; values are floats in [0, 1].
A loader whose clips carry labels (KTH, smallNORB, SUNCG) is also a `LabelledClips`: what the evaluation's
probes need.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from utils import DRNetError


class ClipDataset(Protocol):
    """What training and evaluation need of one split of a dataset."""

    channels: int
    image_size: int
    max_step: int

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """x_c1, x_c2, x_p1, x_p2 of one clip each, (4, B, C, S, S) in [0, 1]."""

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Clips of `length` consecutive frames, (B, T, C, S, S) in [0, 1]."""


class ProbeBatch(NamedTuple):
    """Two frames of each of B clips with the clips' labels and identities, for the evaluation's probes."""

    frames: torch.Tensor  # (B, 2, C, S, S): the first frame of a max_step window, then a random frame of it
    labels: torch.Tensor  # (B, len(label_columns)) int64
    identities: torch.Tensor  # (B,) int64: which video, toy or chair each clip shows


@runtime_checkable
class LabelledClips(Protocol):
    """A split whose clips carry labels and show identities (a KTH video, a NORB toy, a SUNCG chair).

    The identities, in the loader's sorted order, fall into two parts by the parity of their index, so a
    probe fitted on part 0 and scored on part 1 never meets an identity it has seen. `label_columns`
    names the labels that can be probed across identities, hence not the identity itself.
    """

    label_columns: tuple[str, ...]

    @property
    def num_identities(self) -> int:
        """Number of identities in this split."""

    def probe_batch(self, batch_size: int, generator: torch.Generator, part: int | None = None) -> ProbeBatch:
        """Two frames, labels and identities of `batch_size` clips of identity part 0 or 1 (None: any clip)."""

# Shared by every dataset: alpha 1 and beta 0.0001 suit mean-reduced losses (SPEC §4, README).
COMMON = {"alpha": 1.0, "beta": 0.0001, "content_dim": 128}

DATASETS = {
    "mnist": {"loader": "datasets.moving_mnist:moving_mnist", "image_width": 64, "channels": 3,
              "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan", "use_skip": False,
              "pose_dim": 5, **COMMON},
    "kth": {"loader": "datasets.kth:KTHClips", "image_width": 128, "channels": 1,
            "content_encoder": "vgg16", "pose_encoder": "resnet18", "decoder": "vgg16", "use_skip": True,
            "pose_dim": 24, **COMMON},
    "suncg": {"loader": "datasets.suncg:SuncgClips", "image_width": 64, "channels": 3,
              "content_encoder": "resnet18", "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False,
              "pose_dim": 10, **COMMON},
    "norb": {"loader": "datasets.norb:NorbClips", "image_width": 64, "channels": 1,
             "content_encoder": "resnet18", "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False,
             "pose_dim": 10, **COMMON},
    # Your own videos (datasets/frames.py). The Moving MNIST networks at 64 px: the DCGAN encoders and decoder
    # are the smallest here, so a short CPU run on unknown footage stays practical, and skips stay off as there.
    # RGB, since most footage is in colour. pose_dim 10 as for the other real scenes (SUNCG, smallNORB): more
    # than Moving MNIST's 5 (two digits' positions), less than KTH's 24 (a person's articulated pose).
    "frames": {"loader": "datasets.frames:FrameClips", "image_width": 64, "channels": 3,
               "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan", "use_skip": False,
               "pose_dim": 10, **COMMON},
}


def build_dataset(config: dict, split: str) -> ClipDataset:
    """Clips of `split` ("train" or "test") for the dataset and sizes named in a resolved config."""
    name = config["dataset"]
    loader = DATASETS[name]["loader"]
    if loader is None:
        raise DRNetError(f"dataset '{name}' is not available yet; available: {', '.join(available())}")
    module_name, function_name = loader.split(":")
    build = getattr(importlib.import_module(module_name), function_name)
    extra = {"num_digits": config["num_digits"]} if name == "mnist" else {}
    return build(config["data_root"], split, config["image_width"], config["channels"], config["max_step"],
                 **extra)


def available() -> list[str]:
    """Names of the datasets that can be trained now."""
    return [name for name, entry in DATASETS.items() if entry["loader"] is not None]
