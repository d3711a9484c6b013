"""A bounded least-recently-used cache for decoded frames of the file-based datasets (KTH, SUNCG)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from utils import DRNetError

Frame = TypeVar("Frame")


def check_loader_sizes(image_size: int, max_step: int, cache_frames: int) -> None:
    """Refuse sizes a file-based loader cannot work with, in one line."""
    if image_size < 1 or max_step < 1 or cache_frames < 0:
        raise DRNetError(f"image_size and max_step must be positive and cache_frames not negative, got "
                         f"{image_size}, {max_step}, {cache_frames}")


class FrameCache(Generic[Frame]):
    """Keeps the `capacity` most recently used frames (0 keeps none), so memory stays bounded."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._frames: OrderedDict[Hashable, Frame] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], Frame]) -> Frame:
        """The frame under `key`, loaded with `load()` the first time and after it has been evicted."""
        frame = self.lookup(key)
        if frame is None:
            frame = load()
            self.put(key, frame)
        return frame

    def lookup(self, key: Hashable) -> Frame | None:
        """The frame under `key`, marked as just used, or None if it is not kept."""
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
        return frame

    def put(self, key: Hashable, frame: Frame) -> None:
        """Keep `frame` under `key`, evicting the least recently used frame beyond the capacity."""
        if self.capacity > 0:
            self._frames[key] = frame
            if len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def __len__(self) -> int:
        return len(self._frames)
