"""Training batches drawn in order from one generator, optionally prepared ahead on a thread (`--data_threads`).

The stream is the same with or without the thread: batches are always drawn one after another from the
same generator, exactly as the training loop would draw them, and each comes with the generator state
that follows it. A checkpoint stores that state, so a resumed run draws the very batch the stopped run
would have used next, whatever the thread had prepared beyond it (that work is simply dropped).

One thread, not several: batch k + 1 needs the generator state that batch k leaves behind, so the draws
cannot run side by side without changing the stream. The thread still overlaps reading and decoding
frames (PIL and torch release the GIL) with the training step. The loader must draw only from the
generator it is given (never from torch's global generator), and the training loop must not use the
loader while the stream is open: the loader's caches are not thread-safe.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

_PUT_POLL_S = 0.1  # how often a thread waiting for room in the queue checks whether it should stop
# The most batches prepared ahead. Each waits in memory, and one thread that keeps pace with the training
# step needs only a few: more buys nothing but memory (a KTH batch of 100 clips at 128 px holds 26 MB,
# 130 MB in the LSTM stage).
MAX_AHEAD = 8


class BatchStream:
    """Yields (batch, generator state after it) from `draw(generator)`, up to `ahead` (<= MAX_AHEAD) ahead.

    With `ahead` 0 each batch is drawn when asked for, in the calling thread. Use as a context manager,
    so that the thread stops when training does. With `pin_memory`, batches drawn on the CPU are copied to
    page-locked memory (on the thread, where there is one), from which a copy to a GPU runs asynchronously.
    """

    def __init__(self, draw: Callable[[torch.Generator], torch.Tensor], generator: torch.Generator,
                 ahead: int, pin_memory: bool = False) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must not be negative, got {ahead}")
        if ahead > MAX_AHEAD:
            raise ValueError(f"ahead must be at most {MAX_AHEAD}, got {ahead}")
        self._draw, self._generator, self._pin = draw, generator, pin_memory
        self._ready: queue.Queue = queue.Queue(maxsize=max(ahead, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="drnet-batches", daemon=True) if ahead else None
        if self._thread is not None:
            self._thread.start()

    def _next_drawn(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one batch and note the generator state after it."""
        batch = self._draw(self._generator)
        if self._pin and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch, self._generator.get_state()

    def _fill(self) -> None:
        """The thread: draw batches in order into the queue until stopped or the loader fails."""
        while not self._stop.is_set():
            try:
                item: tuple[torch.Tensor, torch.Tensor] | BaseException = self._next_drawn()
            except BaseException as error:  # handed to the training loop, which raises it there
                item = error
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=_PUT_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            return self._next_drawn()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is drawing) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
