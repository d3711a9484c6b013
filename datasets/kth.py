"""KTH actions as DRNET clips, read from the PNG frames and index that the KTH conversion writes.

Prepare the data once (the paper's KTH, 64 or 128 px)::

    sh datasets/prepare/download_kth.sh DIR
    python -m datasets.prepare.convert_kth --data_root DIR --image_width S      # S = 64 or 128

Split by person (1-16 train, 17-25 test), as recorded in ``DIR/processed/<S>/index.json``. Segments
there are 0-based half-open frame ranges ``[start, end)`` (the conversion command's docstring gives the file format).

Sampling, per clip, each choice uniform: a class, a video of that class, one of its action segments, then
- ``drnet_batch``: a window of ``max_step`` consecutive frames inside the segment (the whole segment
  when it is shorter), and four frames drawn independently and uniformly from that window;
- ``sequence_batch``: T consecutive frames inside the segment, drawn only among segments of at least
  T frames (a class or video without one is not drawn).
- ``probe_batch`` (the evaluation's probes): the first frame of such a window and a random frame of
  it, with (B, 2) int64 labels in the columns of ``LABEL_COLUMNS`` (the class's index in ``KTH_CLASSES``
  and the person number, 1-25) and the video's index as the clip's identity: part 0 holds the videos of
  even index, part 1 those of odd index (sorted by name, so a person's videos of one action fall on both).
All draws use the caller's torch.Generator, so the same generator state gives the same batch.

Frames are decoded lazily with PIL and kept in a bounded least-recently-used cache. A batch's frames
are decoded side by side on `decode_threads` threads (PIL releases the GIL while it decodes a PNG): all its
random choices are drawn first, exactly as one thread would draw them, then the chosen files are read, so
the batches do not depend on the number of threads. The cache is touched only by the thread that draws
the batch, never by the decode threads, and is not thread-safe otherwise: one batch at a time per loader.
"""

import itertools
import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets import ProbeBatch
from datasets.cache import FrameCache
from datasets.prepare.kth_download import KTH_CLASSES
from utils import DRNetError

# The prepared data's format, which convert_kth.py writes: frames and index.json per image size.
IMAGE_SIZES = (64, 128)
INDEX_FILE = "index.json"
FRAME_FILE = "{:05d}.png"
SPLITS = ("train", "test")
LABEL_COLUMNS = ("class", "person")
DEFAULT_CACHE_FRAMES = 8192  # 128 MiB of 128x128 grey frames
# Frames of one batch decoded side by side: a 128 px PNG takes 0.3-0.7 ms, and a DRNET batch of 100 clips
# reads 400 of them. Opening a file and parsing its chunks holds the GIL, so more threads soon stop paying:
# tools/data_speed.py on a 16-core Xeon took 0.092 s per batch with 1 decode thread, 0.058 s with 2,
# 0.061 s with 4 and 0.091 s with 8.
DECODE_THREADS = min(2, os.cpu_count() or 1)

# The decode threads, shared by all loaders of the process: one pool per thread count, made on first use
# and kept until exit, so that tests and evaluations that build many loaders never add threads.
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _decode_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of `threads` decode threads."""
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix=f"kth-decode-{threads}")
        return _pools[threads]


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist there, so a pool inherited would never
    run what it is given; the child makes its own."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_pools)


def processed_dir(data_root: str | Path, image_size: int) -> Path:
    """The folder holding the frames and the index for one image size."""
    return Path(data_root) / "processed" / str(image_size)


def preparation_commands(data_root: str, image_size: int) -> str:
    """The two commands that prepare KTH under `data_root`, as an error message names them."""
    return (f"prepare it with `sh datasets/prepare/download_kth.sh {data_root}` and then "
            f"`python -m datasets.prepare.convert_kth --data_root {data_root} --image_width {image_size}`")


def missing_data_error(data_root: str, image_size: int, problem: str) -> DRNetError:
    """The one-line error for absent or half-prepared KTH data, naming both preparation commands."""
    return DRNetError(f"KTH data for image size {image_size} is missing or incomplete under {data_root} ({problem}); "
                      + preparation_commands(data_root, image_size))


def _draw(high: int, generator: torch.Generator) -> int:
    """A uniform integer in [0, high) from `generator`."""
    return int(torch.randint(high, (1,), generator=generator))


class KTHClips:
    """KTH clips of one split: class -> video -> action segment -> frames, PNGs read lazily."""

    label_columns = LABEL_COLUMNS

    def __init__(self, data_root: str, split: str, image_size: int, channels: int, max_step: int,
                 cache_frames: int = DEFAULT_CACHE_FRAMES, decode_threads: int = DECODE_THREADS) -> None:
        if split not in SPLITS:
            raise DRNetError(f"unknown KTH split '{split}'; use 'train' or 'test'")
        if channels != 1:
            raise DRNetError(f"KTH videos are grey: channels must be 1, got {channels}")
        if image_size not in IMAGE_SIZES:
            raise DRNetError(f"KTH is prepared at image size 64 or 128, got {image_size}")
        if max_step < 1 or cache_frames < 0:
            raise DRNetError(f"max_step must be positive and cache_frames not negative, got "
                             f"{max_step}, {cache_frames}")
        if decode_threads < 1:
            raise DRNetError(f"decode_threads must be positive, got {decode_threads}")
        self.channels = channels
        self.image_size = image_size
        self.max_step = max_step
        self.split = split
        self.decode_threads = decode_threads
        self._data_root = str(data_root)
        root = processed_dir(data_root, image_size)
        self.videos = [video for video in self._read_index(root) if video["split"] == split]
        if not self.videos:
            raise missing_data_error(self._data_root, image_size, f"no {split} videos in the index")
        self._frame_dirs = [root / video["name"] for video in self.videos]
        for frame_dir in self._frame_dirs:
            if not frame_dir.is_dir():
                raise missing_data_error(self._data_root, image_size, f"{frame_dir} not found")
        self._segments = [[tuple(segment) for segment in video["segments"]] for video in self.videos]
        self._labels = torch.tensor(
            [(KTH_CLASSES.index(video["class"]), video["person"]) for video in self.videos], dtype=torch.int64
        )
        # Computed once: every segment is eligible for drnet_batch (windows shrink to short segments).
        self._drnet_eligible = self._eligible(1)
        self._cache: FrameCache[np.ndarray] = FrameCache(cache_frames)

    def _read_index(self, root: Path) -> list[dict]:
        """The video records of index.json, checked against the requested image size."""
        index_path = root / INDEX_FILE
        try:
            index = json.loads(index_path.read_text())
            videos = index["videos"]
            index_size = index["image_size"]
        except FileNotFoundError:
            raise missing_data_error(self._data_root, self.image_size, f"{index_path} not found") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise missing_data_error(
                self._data_root, self.image_size, f"{index_path} unreadable: {error!r}"
            ) from error
        if index_size != self.image_size:
            raise missing_data_error(
                self._data_root, self.image_size, f"{index_path} is for image size {index_size}"
            )
        return videos

    @property
    def num_videos(self) -> int:
        """Number of videos in this split."""
        return len(self.videos)

    @property
    def num_identities(self) -> int:
        """Number of identities (videos) in this split: the probes' fitting and scoring clips share none."""
        return self.num_videos

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        """Raise DRNetError unless the batch size is positive."""
        if batch_size < 1:
            raise DRNetError(f"batch size must be positive, got {batch_size}")

    def _eligible(self, min_length: int) -> list[list[tuple[int, list[tuple[int, int]]]]]:
        """Videos per class as (video, its segments of at least `min_length` frames), leaving out the rest."""
        by_class: dict[str, list[tuple[int, list[tuple[int, int]]]]] = {}
        for video, segments in enumerate(self._segments):
            long_enough = [(start, end) for start, end in segments if end - start >= min_length]
            if long_enough:
                by_class.setdefault(self.videos[video]["class"], []).append((video, long_enough))
        return [by_class[action] for action in KTH_CLASSES if action in by_class]

    def _draw_segment(self, eligible: list, generator: torch.Generator) -> tuple[int, int, int]:
        """Draw class, then video, then segment; return (video, start, end)."""
        videos = eligible[_draw(len(eligible), generator)]
        video, segments = videos[_draw(len(videos), generator)]
        start, end = segments[_draw(len(segments), generator)]
        return video, start, end

    def _draw_window(self, eligible: list, generator: torch.Generator) -> tuple[int, int, int]:
        """Draw a segment, then a window of `max_step` frames inside it (all of a shorter segment).

        Returns (video, first frame of the window, window length).
        """
        video, start, end = self._draw_segment(eligible, generator)
        window = min(self.max_step, end - start)
        return video, start + _draw(end - start - window + 1, generator), window

    def _frames(self, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """The frames (video, index) of `keys` as uint8 (S, S), each read once: from the cache, else decoded.

        The frames missing from the cache are decoded on the decode threads and added to it in the order of
        `keys`; when files are broken, the error is that of the first in this order, as with one thread.
        """
        frames: dict[tuple[int, int], np.ndarray] = {}
        missing: list[tuple[int, int]] = []
        for key in dict.fromkeys(keys):  # a frame drawn twice in a batch is read once
            frame = self._cache.lookup(key)
            if frame is None:
                missing.append(key)
            else:
                frames[key] = frame
        decoded: Iterable[np.ndarray]
        if self.decode_threads > 1 and len(missing) > 1:
            # Runs of frames, not a task per frame: each task costs hand-overs of the GIL, which on a busy
            # 2-core CPU cost more than the second thread gained. Four runs per thread even out a thread
            # that the OS stalls. map yields in order and, on an error, cancels the runs not yet started.
            runs = min(len(missing), 4 * self.decode_threads)
            bounds = [len(missing) * run // runs for run in range(runs + 1)]
            decoded = itertools.chain.from_iterable(_decode_pool(self.decode_threads).map(
                self._read_frames, (missing[start:end] for start, end in itertools.pairwise(bounds))))
        else:
            decoded = self._read_frames(missing)
        for key, frame in zip(missing, decoded, strict=True):
            self._cache.put(key, frame)
            frames[key] = frame
        return frames

    def _read_frames(self, keys: list[tuple[int, int]]) -> list[np.ndarray]:
        """The frames (video, index) of `keys`, read one after another; the first broken file raises."""
        return [self._read_frame(video, index) for video, index in keys]

    def _read_frame(self, video: int, index: int) -> np.ndarray:
        """Frame `index` (0-based) of a video as uint8 (S, S), read from its PNG file."""
        path = self._frame_dirs[video] / FRAME_FILE.format(index)
        try:
            with Image.open(path) as image:
                frame = np.array(image.convert("L"), dtype=np.uint8)
        except FileNotFoundError:
            raise missing_data_error(self._data_root, self.image_size, f"{path} not found") from None
        # PIL reports broken files as OSError, and some broken PNG chunks as SyntaxError or ValueError.
        except (OSError, SyntaxError, ValueError) as error:
            raise DRNetError(f"cannot read KTH frame {path}: {error}") from error
        if frame.shape != (self.image_size, self.image_size):
            raise missing_data_error(self._data_root, self.image_size, f"{path} has shape {frame.shape}")
        return frame

    def _gather(self, videos: list[int], frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, K) of `videos` (N) as float32 (N, K, 1, S, S) in [0, 1]."""
        keys = [(video, int(index)) for video, row in zip(videos, frames, strict=True) for index in row]
        found = self._frames(keys)
        pixels = np.stack([found[key] for key in keys]).reshape(*frames.shape, self.image_size, self.image_size)
        return torch.from_numpy(pixels).unsqueeze(2).float().div_(255)

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """x_c1, x_c2, x_p1, x_p2 as (4, B, 1, S, S): four frames drawn uniformly from one clip's window."""
        self._check_batch_size(batch_size)
        videos, frames = [], []
        for _ in range(batch_size):
            video, window_start, window = self._draw_window(self._drnet_eligible, generator)
            videos.append(video)
            frames.append(window_start + torch.randint(window, (4,), generator=generator))
        return self._gather(videos, torch.stack(frames)).transpose(0, 1).contiguous()

    def probe_batch(self, batch_size: int, generator: torch.Generator, part: int | None = None) -> ProbeBatch:
        """A window's first frame and a random frame of it, (B, 2, 1, S, S), from videos of identity part 0 or 1.

        Only two frames per clip are read, however long the window.
        """
        self._check_batch_size(batch_size)
        eligible = [[(video, segments) for video, segments in videos if part is None or video % 2 == part]
                    for videos in self._drnet_eligible]
        eligible = [videos for videos in eligible if videos]  # a class may have no video in this part
        if not eligible:
            raise DRNetError(f"no KTH {self.split} video in probe part {part}: the split holds "
                             f"{self.num_videos} video(s), the probes need at least two")
        videos, frames = [], []
        for _ in range(batch_size):
            video, window_start, window = self._draw_window(eligible, generator)
            videos.append(video)
            frames.append(torch.tensor([window_start, window_start + _draw(window, generator)]))
        return ProbeBatch(self._gather(videos, torch.stack(frames)), self._labels[videos], torch.tensor(videos))

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T, 1, S, S) runs of T consecutive frames in one segment."""
        self._check_batch_size(batch_size)
        if length < 1:
            raise DRNetError(f"sequence length must be positive, got {length}")
        eligible = self._eligible(length)
        if not eligible:
            raise DRNetError(f"no KTH {self.split} segment has {length} frames; use shorter sequences")
        videos, frames = [], []
        for _ in range(batch_size):
            video, start, end = self._draw_segment(eligible, generator)
            first = start + _draw(end - start - length + 1, generator)
            videos.append(video)
            frames.append(torch.arange(first, first + length))
        return self._gather(videos, torch.stack(frames))
