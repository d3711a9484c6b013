"""Dataset registry: each dataset's loader (a callable), its architectures and default hyper-parameters.

A loader is called as `loader(data_root, split, image_width, channels, max_step)` (Moving MNIST also takes
`num_digits`) and returns a `ClipDataset`, which says what a split offers.
"""

from __future__ import annotations

from datasets import ClipDataset
from datasets.frames import FrameClips
from datasets.kth import KTHClips
from datasets.moving_mnist import moving_mnist
from datasets.norb import NorbClips
from datasets.suncg import SuncgClips
from utils import DRNetError

# Shared by every dataset: alpha 1 and beta 0.0001 suit mean-reduced losses (docs/faithfulness.md).
COMMON = {"alpha": 1.0, "beta": 0.0001, "content_dim": 128}

DATASETS = {
    "mnist": {"loader": moving_mnist, "image_width": 64, "channels": 3,
              "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan", "use_skip": False,
              "pose_dim": 5, **COMMON},
    "kth": {"loader": KTHClips, "image_width": 128, "channels": 1,
            "content_encoder": "vgg16", "pose_encoder": "resnet18", "decoder": "vgg16", "use_skip": True,
            "pose_dim": 24, **COMMON},
    "suncg": {"loader": SuncgClips, "image_width": 64, "channels": 3,
              "content_encoder": "resnet18", "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False,
              "pose_dim": 10, **COMMON},
    "norb": {"loader": NorbClips, "image_width": 64, "channels": 1,
             "content_encoder": "resnet18", "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False,
             "pose_dim": 10, **COMMON},
    # Your own videos (datasets/frames.py). The Moving MNIST networks at 64 px: the DCGAN encoders and decoder
    # are the smallest here, so a short CPU run on unknown footage stays practical, and skips stay off as there.
    # RGB, since most footage is in colour. pose_dim 10 as for the other real scenes (SUNCG, smallNORB): more
    # than Moving MNIST's 5 (two digits' positions), less than KTH's 24 (a person's articulated pose).
    "frames": {"loader": FrameClips, "image_width": 64, "channels": 3,
               "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan", "use_skip": False,
               "pose_dim": 10, **COMMON},
}


def build_dataset(config: dict, split: str) -> ClipDataset:
    """Clips of `split` ("train" or "test") for the dataset and sizes named in a resolved config."""
    name = config["dataset"]
    build = DATASETS[name]["loader"]
    if build is None:
        raise DRNetError(f"dataset '{name}' is not available yet; available: {', '.join(available())}")
    extra = {"num_digits": config["num_digits"]} if name == "mnist" else {}
    if name == "mnist" and split == "train":
        # The frame sampling of a training example (--sampling); test metrics keep the independent draws, so
        # that runs trained under different regimes are measured alike. Configs older than the flag lack it.
        extra["sampling"] = config.get("sampling", "independent")
    return build(config["data_root"], split, config["image_width"], config["channels"], config["max_step"],
                 **extra)


def available() -> list[str]:
    """Names of the datasets that can be trained now."""
    return [name for name, entry in DATASETS.items() if entry["loader"] is not None]


def defaults_table() -> str:
    """The model defaults of every dataset in DATASETS, as a text table (the end of main.py --help)."""
    header = ("dataset", "image_width", "channels", "encoders (content/pose)", "decoder", "use_skip", "content_dim",
              "pose_dim")
    rows = [(name, str(entry["image_width"]), str(entry["channels"]),
             f"{entry['content_encoder']}/{entry['pose_encoder']}", entry["decoder"], str(entry["use_skip"]),
             str(entry["content_dim"]), str(entry["pose_dim"])) for name, entry in DATASETS.items()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    return "model defaults of each --dataset (flags given explicitly override them):\n" + "\n".join(
        "  " + line for line in lines)
