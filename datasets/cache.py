"""A bounded least-recently-used cache for decoded frames of the file-based datasets (KTH, SUNCG)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Frame = TypeVar("Frame")


class FrameCache(Generic[Frame]):
    """Keeps the `capacity` most recently used frames (0 keeps none), so memory stays bounded."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._frames: OrderedDict[Hashable, Frame] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], Frame]) -> Frame:
        """The frame under `key`, loaded with `load()` the first time and after it has been evicted."""
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            return frame
        frame = load()
        if self.capacity > 0:
            self._frames[key] = frame
            if len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
        return frame

    def __len__(self) -> int:
        return len(self._frames)
