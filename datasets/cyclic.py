"""Sampling shared by datasets whose clips are closed loops of views (NORB azimuths, SUNCG views round a chair).

A subclass sets `clip_length`, `max_step`, `_labels` (one row per clip, in the columns `clip_columns`), the
columns `identity_columns` that name what a clip shows (a toy, a chair) and `label_columns` (those worth
probing across identities), and implements `_gather`; windows and sequences may start at any view and wrap
around, so a sequence can be longer than a clip.
"""

from __future__ import annotations

import torch

from datasets import ProbeBatch
from utils import DRNetError


class CyclicClips:
    """DRNET batches and sequences drawn from clips whose last view is followed by the first."""

    clip_length: int
    max_step: int
    clip_columns: tuple[str, ...]  # the columns of `_labels` and of clip_labels()
    identity_columns: tuple[str, ...]  # the columns that together name a clip's identity
    label_columns: tuple[str, ...]  # the columns probe_batch returns
    _labels: torch.Tensor

    def _gather(self, clips: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Frames at matching (clip, view) index tensors of one shape, as float32 (*shape, C, S, S) in [0, 1]."""
        raise NotImplementedError

    @property
    def num_clips(self) -> int:
        """Number of clips in this split."""
        return len(self._labels)

    def clip_labels(self) -> torch.Tensor:
        """Labels of every clip, (num_clips, len(clip_columns)) int64."""
        return self._labels.clone()

    def _columns(self, names: tuple[str, ...]) -> torch.Tensor:
        """The label columns `names` of every clip, (num_clips, len(names))."""
        return self._labels[:, [self.clip_columns.index(name) for name in names]]

    def clip_identities(self) -> torch.Tensor:
        """The identity of every clip, (num_clips,) int64: the rank of its identity columns in sorted order."""
        return torch.unique(self._columns(self.identity_columns), dim=0, return_inverse=True)[1]

    @property
    def num_identities(self) -> int:
        """Number of identities (toys, chairs) in this split: the probes' fitting and scoring clips share none."""
        return len(torch.unique(self._columns(self.identity_columns), dim=0))

    def clip_sequence(self, clip: int, start: int, length: int) -> torch.Tensor:
        """Views start, start+1, .. (0-based, cyclic) of one clip as float32 (length, C, S, S)."""
        if not 0 <= clip < self.num_clips or length < 1:
            raise DRNetError(f"no sequence of length {length} in clip {clip} of {self.num_clips} clips")
        views = (start + torch.arange(length)) % self.clip_length
        return self._gather(torch.full_like(views, clip), views)

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """x_c1, x_c2, x_p1, x_p2 as (4, B, C, S, S): four frames drawn uniformly from one clip's window."""
        clips = torch.randint(self.num_clips, (batch_size,), generator=generator)
        window = min(self.max_step, self.clip_length)
        starts = torch.randint(self.clip_length, (batch_size,), generator=generator)
        offsets = torch.randint(window, (4, batch_size), generator=generator)
        views = (starts + offsets) % self.clip_length
        return self._gather(clips.expand(4, -1), views)

    def probe_batch(self, batch_size: int, generator: torch.Generator, part: int | None = None) -> ProbeBatch:
        """A window's first view and a random view of it, (B, 2, C, S, S), of clips of identity part 0 or 1."""
        identities = self.clip_identities()
        candidates = torch.arange(self.num_clips) if part is None else (identities % 2 == part).nonzero()[:, 0]
        if len(candidates) == 0:
            raise DRNetError(f"no clip in probe part {part}: the split shows {self.num_identities} "
                             f"identity (by {', '.join(self.identity_columns)}), the probes need at least two")
        clips = candidates[torch.randint(len(candidates), (batch_size,), generator=generator)]
        starts = torch.randint(self.clip_length, (batch_size,), generator=generator)
        offsets = torch.randint(min(self.max_step, self.clip_length), (batch_size,), generator=generator)
        views = torch.stack([starts, starts + offsets], dim=1) % self.clip_length
        return ProbeBatch(self._gather(clips[:, None].expand(-1, 2), views),
                          self._columns(self.label_columns)[clips], identities[clips])

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T, C, S, S) runs of consecutive views (cyclic)."""
        if length < 1:
            raise DRNetError(f"sequence length must be positive, got {length}")
        clips = torch.randint(self.num_clips, (batch_size,), generator=generator)
        starts = torch.randint(self.clip_length, (batch_size,), generator=generator)
        views = (starts[:, None] + torch.arange(length)) % self.clip_length
        return self._gather(clips[:, None].expand(-1, length), views)
