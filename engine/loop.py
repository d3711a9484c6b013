"""The iteration loop both training stages share: progress bar, metrics rows, periodic saves, a clean stop on
Ctrl-C, and a watch for losses that blow up.
"""

from __future__ import annotations

import logging
import math
import signal
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from datasets.prefetch import BatchStream
from engine import distributed
from engine.checkpoints import kept_checkpoint
from utils import DRNetError, MetricsLog

log = logging.getLogger("drnet")


class LossWatch:
    """Spots losses that jump far above their running median: the usual first sign of a diverging run."""

    def __init__(self, factor: float = 1000.0, window: int = 100):
        self.factor, self.window = factor, window
        self.history: dict[str, deque[float]] = {}
        self.quiet_until: dict[str, int] = {}

    def check(self, iteration: int, values: dict[str, float]) -> list[str]:
        """Record one iteration's metrics; a warning per loss above `factor` times its running median.

        The median is over the last `window` iterations, from the second iteration on: a too-high learning
        rate can blow a loss up within one step. Accuracies (names ending in `_acc`) are not losses and are
        left out. A loss that warned stays quiet for a window, so a diverged run warns once, not every time.
        """
        warnings = []
        for name, value in values.items():
            if name.endswith("_acc"):
                continue
            history = self.history.setdefault(name, deque(maxlen=self.window))
            median = statistics.median(history) if history else math.nan
            if median > 0 and value > self.factor * median and iteration >= self.quiet_until.get(name, 0):
                warnings.append(f"warning: iteration {iteration}: {name} {value:.4g} is {value / median:.3g} times "
                                f"its running median {median:.4g}; the run may be diverging (a lower --lr helps)")
                self.quiet_until[name] = iteration + self.window
            history.append(value)
        return warnings


class StopOnInterrupt:
    """Within this context the first Ctrl-C asks the training loop to stop cleanly after the current
    iteration (so the checkpoint holds a whole iteration); a second Ctrl-C aborts at once."""

    def __enter__(self) -> StopOnInterrupt:
        self.requested = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.getLogger("drnet").info("stopping after this iteration (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def read_losses(pending: list[tuple[int, dict[str, torch.Tensor | float]]]) -> list[tuple[int, dict[str, float]]]:
    """The metrics of the iterations in `pending` as numbers, copied from the device in one transfer."""
    names = list(pending[0][1])
    rows = torch.stack([torch.stack([torch.as_tensor(values[name], dtype=torch.float64) for name in names])
                        for _, values in pending]).tolist()
    return [(iteration, dict(zip(names, row, strict=True))) for (iteration, _), row in zip(pending, rows, strict=True)]


def run_iterations(config: dict, start: int, stage: str, batches: BatchStream,
                   step: Callable[[torch.Tensor], dict[str, torch.Tensor | float]], metrics: MetricsLog | None,
                   save: Callable[[int, torch.Tensor | list[torch.Tensor]], None] | None, resume_flags: str) -> None:
    """The loop both stages share: progress bar with ETA, a metrics row per iteration, periodic saves, and
    a clean stop on Ctrl-C that saves the last whole iteration. `save` gets the data state after a batch
    (every rank's, in a run of several processes: `distributed.gather_states`). `step` returns its metrics as
    numbers or as tensors still on the device; they are read every `config['sync_every']` iterations.

    In a run of several processes the metrics are means over ranks and every rank stops at the same
    iteration; ranks other than 0 pass no `metrics` and no `save` (they write nothing) and show no progress bar.

    Non-finite losses, and a save that fails (non-finite weights, a full disk), stop the run with a
    one-line DRNetError before a checkpoint of that iteration is written; exploding losses are logged.
    """
    progress = tqdm(range(start + 1, config["max_iter"] + 1), initial=start, total=config["max_iter"],
                    desc=stage, dynamic_ncols=True, disable=config.get("quiet", False) or not distributed.is_main())
    began, done, watch, pending = time.perf_counter(), 0, LossWatch(), []
    with StopOnInterrupt() as interrupt, progress, batches:
        for iteration in progress:
            batch, data_state = next(batches)
            values, stop = distributed.agree(step(batch), interrupt.requested)
            pending.append((iteration, values))
            done += 1
            save_now = iteration % config["save_iters"] == 0 or iteration == config["max_iter"] or stop
            # Reading a loss makes the host wait for the device; reading several iterations' losses at once
            # lets a GPU run ahead of Python in between. Every save reads them first, so no checkpoint
            # follows a non-finite loss.
            if save_now or len(pending) >= config.get("sync_every", 1):
                for read_iteration, read_values in read_losses(pending):
                    if not all(math.isfinite(v) for v in read_values.values()):
                        raise DRNetError(f"{stage} stopped at iteration {read_iteration}: the loss is not finite ("
                                         + ", ".join(f"{name} {value:.4g}" for name, value in read_values.items())
                                         + f"); {kept_checkpoint(Path(config['run_dir']))}; try a lower --lr")
                    for warning in watch.check(read_iteration, read_values):
                        log.warning(warning)
                    if metrics is not None:
                        metrics.append(read_iteration, read_values)
                pending = []
                progress.set_postfix({name: f"{value:.4g}" for name, value in read_values.items()}, refresh=False)
            if save_now:
                data_states = distributed.gather_states(data_state)  # every rank takes part, rank 0 saves
                try:
                    if save is not None:
                        save(iteration, data_states)
                except DRNetError as error:  # the error says what was kept; add where the run stopped
                    raise DRNetError(f"{stage} stopped at iteration {iteration}: {error}") from error
            if stop:
                log.info("stopped at iteration %d; continue with %s", iteration, resume_flags)
                break
    if done > 0:
        elapsed = time.perf_counter() - began
        log.info("trained %s %d iterations in %.1f s (%.2f s/iteration)", stage, done, elapsed, elapsed / done)
