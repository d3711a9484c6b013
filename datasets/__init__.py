"""Datasets of clips: what a dataset offers, `ClipDataset` (one split), and `LabelledClips` where its clips carry
labels. The registry of loaders and their defaults is `datasets.registry`; each loader has its own module.

A loader returns clips of one split with two methods, the only ones training needs:
`drnet_batch(batch_size, generator) -> (4, B, C, S, S)` (x_c1, x_c2, x_p1, x_p2 of one clip each) and
`sequence_batch(batch_size, length, generator) -> (B, T, C, S, S)`; values are floats in [0, 1].
A loader whose clips carry labels (KTH, smallNORB, SUNCG) is also a `LabelledClips`: it names its label
columns and draws labelled batches, which is all the evaluation's probes need.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


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
