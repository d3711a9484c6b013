"""General helpers: user-facing errors and the exit status they end a command with, flag parsing, devices,
atomic file writes, the run directory's lock, logging, and the CSV logs of a run's metrics."""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import logging
import logging.handlers
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not protected from sharing a run directory
    fcntl = None

RUN_LOCK = "run.lock"  # in a run directory: locked by the run using it, holds who that is


# The exit status of every command's one-line user error (a bad flag, a missing file), as argparse's own.
USER_ERROR = 2


class DRNetError(Exception):
    """An error the user can fix; `main` prints its message as one line and exits non-zero."""


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value honestly: True/False, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "1", "yes", "y", "on", "t"):
        return True
    if text in ("false", "0", "no", "n", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got '{value}'")


def resolve_device(name: str = "auto", gpu: int = 0) -> torch.device:
    """Pick the device once: `auto` prefers CUDA (GPU number `gpu`), then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DRNetError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        if not 0 <= gpu < torch.cuda.device_count():
            raise DRNetError(f"--gpu {gpu} does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible")
        return torch.device("cuda", gpu)
    if name == "mps" and not torch.backends.mps.is_available():
        raise DRNetError("--device mps was asked for, but MPS is not available on this machine")
    return torch.device(name)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a checkpoint atomically: to a temporary file first, synced and renamed over `path` once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A checkpoint of the same run is about as large as the last one; before the first, count the tensors.
    needed = path.stat().st_size if path.exists() else tensor_bytes(state)
    atomic_write(path, lambda sink: torch.save(state, sink), needed)


def copy_checkpoint(source: Path, destination: Path) -> None:
    """Copy a checkpoint file as safely as `save_checkpoint` writes one."""
    destination.parent.mkdir(parents=True, exist_ok=True)

    def copy(sink: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, sink)

    atomic_write(destination, copy, source.stat().st_size)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], needed: int) -> None:
    """Write `path` through `write(file)` into `<path>.tmp`, flushed to disk, then renamed over `path`.

    A failed write (a full disk) removes the temporary file and leaves `path` as it was; the DRNetError names
    the file and, when space ran out, how much was needed (`needed` bytes) and how much is free.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        # Written through a Python file, torch.save reports a full disk as OSError(ENOSPC), not as an
        # unspecific RuntimeError from its own C++ writer.
        with open(temporary, "wb") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(temporary, path)
    except BaseException as error:  # whatever stopped the write (a full disk, a second Ctrl-C): no half file stays
        temporary.unlink(missing_ok=True)
        failure = os_error_of(error)
        if failure is None:
            raise
        raise DRNetError(f"cannot write {path}: {write_failure(failure, path.parent, needed)}; "
                         f"{'the previous ' + path.name + ' is unchanged' if path.exists() else 'nothing was written'}"
                         ) from error
    sync_directory(path.parent)


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind a failed write: the error itself, or the one it was raised while handling.

    torch.save's zip writer meets a full disk as the file's OSError, then fails again closing the archive and
    raises a RuntimeError ("[enforce fail at inline_container.cc...] unexpected pos") in its place.
    """
    while error is not None and not isinstance(error, OSError):
        error = error.__context__
    return error


def write_failure(error: OSError, folder: Path, needed: int) -> str:
    """Why a write failed; for a full disk, the space it needed and the space free in `folder`."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return error.strerror or str(error)
    return (f"no space left ({needed / 1e6:.1f} MB needed, {shutil.disk_usage(folder).free / 1e6:.1f} MB free "
            f"in {folder})")


def sync_directory(folder: Path) -> None:
    """Flush a directory's entries to disk, so that a rename in it survives a power cut."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # systems that cannot open a directory (Windows) persist renames without it
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def named_tensors(state: object, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a nested state (dicts, lists, tuples) with their dotted paths (optimizers.main.state.0.step)."""
    if isinstance(state, torch.Tensor):
        yield name, state
    elif isinstance(state, dict | list | tuple):
        for key, value in state.items() if isinstance(state, dict) else enumerate(state):
            yield from named_tensors(value, f"{name}.{key}" if name else str(key))


def tensor_bytes(state: object) -> int:
    """Bytes of all tensors in a nested state (dicts, lists, tuples): about a checkpoint's size on disk."""
    return sum(tensor.numel() * tensor.element_size() for _, tensor in named_tensors(state))


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and write a file in it (removed at once), or raise a one-line DRNetError.

    Writers that fail late (a background thread, a file after minutes of work) get their folder tried first.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        why = "it is a file, not a folder" if folder.is_file() else error.strerror
        raise DRNetError(f"cannot write {what} in {folder}: {why}") from error


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Create `run_dir` and hold it exclusively until the block ends, or raise a one-line DRNetError.

    The hold is an flock on `run.lock`, which says who holds it (pid, start time, command); the operating
    system drops the lock when the process ends, however it ends, so a killed run never leaves it stuck.
    Take it before anything looks at the directory, so that what a run finds there stays so while it runs.
    A directory the hold created and the block left holding the lock alone (a command stopped by a check)
    is removed again, with the parent folders it created: a refused command leaves nothing behind.
    """
    try:
        created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    except OSError as error:  # a name too long for the file system
        raise DRNetError(f"cannot create the run directory {run_dir}: {error.strerror}") from error
    descriptor = _open_locked(run_dir)
    try:
        holder = f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(sys.argv)}"
        os.ftruncate(descriptor, 0)  # only now: the previous holder's line stays readable until the lock is ours
        os.write(descriptor, holder.replace("\n", " ").encode() + b"\n")
        yield
    finally:
        if created and [path.name for path in run_dir.iterdir()] == [RUN_LOCK]:
            (run_dir / RUN_LOCK).unlink()  # still locked: a run starting now locks a new file (`_open_locked`)
            for folder in created:
                with contextlib.suppress(OSError):  # another run wrote into a parent meanwhile: it stays
                    folder.rmdir()
        os.close(descriptor)  # releases the lock


def _open_locked(run_dir: Path) -> int:
    """Create `run_dir` and its lock file, lock it, and return its descriptor; a one-line DRNetError if held.

    A lock file removed while this waited for it (a refused command cleaning up) is no lock: take the new one.
    """
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DRNetError(f"cannot create the run directory {run_dir}: {error.strerror}") from error
        if fcntl is None:
            return descriptor
        try:
            _lock(descriptor, run_dir)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(descriptor), os.stat(run_dir / RUN_LOCK)):
                    return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _lock(descriptor: int, run_dir: Path) -> None:
    """Take the exclusive lock on an open lock file, or raise a DRNetError naming the run that holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (run_dir / RUN_LOCK).read_text(errors="replace").strip() or "it is just starting"
        raise DRNetError(f"{run_dir} is in use by another run ({holder}); wait for it to end, stop it, or choose "
                         "another --save_dir") from None
    except OSError as error:  # a file system without locks (some network mounts)
        raise DRNetError(f"cannot lock {run_dir / RUN_LOCK}: {error.strerror}; put the run directory on a file "
                         "system that supports locks") from error


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `*.tmp` files a killed run left half-written in `run_dir` (call it holding the directory)."""
    stale = [*run_dir.glob("*.tmp"), *(run_dir / "checkpoints").glob("*.tmp")]  # never a nested run's (lstm/)
    for path in stale:
        path.unlink()
    return stale


class TqdmHandler(logging.Handler):
    """Logging handler that prints through tqdm, so messages do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(run_dir: Path | None = None, filename: str = "train.log") -> logging.Logger:
    """The `drnet` logger: messages to the terminal and, given a run directory, to a log file in it.

    Without a run directory the messages are also kept, and the log file of a later call starts with them:
    what was said while checking flags and data (which MNIST source, an ignored --gpu) before the run
    directory existed still reaches the run's log.
    """
    logger = logging.getLogger("drnet")
    logger.setLevel(logging.INFO)
    kept: list[logging.LogRecord] = []
    for handler in list(logger.handlers):
        if isinstance(handler, logging.handlers.BufferingHandler):
            kept = list(handler.buffer)
        logger.removeHandler(handler)
        handler.close()
    terminal = TqdmHandler()
    terminal.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(terminal)
    if run_dir is None:
        logger.addHandler(logging.handlers.BufferingHandler(capacity=1000))  # full: it drops what it kept
    else:
        to_file = logging.FileHandler(Path(run_dir) / filename)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        for record in kept:
            to_file.handle(record)
        logger.addHandler(to_file)
    logger.propagate = False
    return logger


class MetricsLog:
    """Append-only CSV of per-iteration metrics; on resume, rows after the resumed iteration are dropped.

    With a `mirror` (--tensorboard: `Board.scalars`) every row is also passed to it as (the CSV's name,
    iteration, values).
    """

    def __init__(self, path: Path, columns: list[str], resume_from: int | None = None,
                 mirror: Callable[[str, int, dict[str, float]], None] | None = None):
        self.path, self.columns, self.mirror = Path(path), ["iteration", *columns], mirror
        rows = read_metrics(self.path) if resume_from is not None and self.path.exists() else []
        kept = [row for row in rows if row["iteration"] <= resume_from] if rows else []
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(self.columns)
        writer.writerows([[_format(row.get(c, math.nan)) for c in self.columns] for row in kept])
        # Rewritten as checkpoints are: a run killed right now keeps the rows it had.
        atomic_write(self.path, lambda sink: sink.write(text.getvalue().encode()), len(text.getvalue()))

    def append(self, iteration: int, values: dict[str, float]) -> None:
        """Add one row; missing columns are written empty."""
        with open(self.path, "a", newline="") as f:
            row = [iteration] + [_format(values.get(c, math.nan)) for c in self.columns[1:]]
            csv.writer(f).writerow(row)
        if self.mirror is not None:  # --tensorboard: the same row, tagged by the CSV's name
            self.mirror(self.path.stem, iteration, values)


def _format(value: float) -> str:
    """CSV text of a metric: empty for NaN, otherwise enough digits to plot and compare."""
    return "" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as dicts of floats (the iteration as int; empty cells as NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "iteration" else float(v) if v else math.nan) for k, v in row.items()}
            for row in rows]


def report_errors(action: Callable[[], str]) -> int:
    """Run a command-line action: print its success message, or its DRNetError as one line; the exit status."""
    try:
        message = action()
    except DRNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR
    print(message)
    return 0
