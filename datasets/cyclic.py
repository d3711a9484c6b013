"""Sampling shared by datasets whose clips are closed loops of views (NORB azimuths, SUNCG views round a chair).

A subclass sets `clip_length`, `max_step`, `_labels` (one row per clip) and implements `_gather`; windows and
sequences may start at any view and wrap around, so a sequence can be longer than a clip.
"""

from __future__ import annotations

import torch

from utils import DRNetError


class CyclicClips:
    """DRNET batches and sequences drawn from clips whose last view is followed by the first."""

    clip_length: int
    max_step: int
    _labels: torch.Tensor

    def _gather(self, clips: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Frames at matching (clip, view) index tensors of one shape, as float32 (*shape, C, S, S) in [0, 1]."""
        raise NotImplementedError

    @property
    def num_clips(self) -> int:
        """Number of clips in this split."""
        return len(self._labels)

    def clip_labels(self) -> torch.Tensor:
        """Labels of every clip, (num_clips, len(LABEL_COLUMNS)) int64."""
        return self._labels.clone()

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

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator,
                       return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C, S, S) runs of consecutive views (cyclic); return_labels adds their labels (B, columns)."""
        if length < 1:
            raise DRNetError(f"sequence length must be positive, got {length}")
        clips = torch.randint(self.num_clips, (batch_size,), generator=generator)
        starts = torch.randint(self.clip_length, (batch_size,), generator=generator)
        views = (starts[:, None] + torch.arange(length)) % self.clip_length
        frames = self._gather(clips[:, None].expand(-1, length), views)
        return (frames, self._labels[clips]) if return_labels else frames
