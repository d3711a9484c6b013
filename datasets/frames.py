"""Your own videos as DRNET clips: `python main.py --dataset frames --data_root DIR`.

DIR holds one clip per entry, in any mix:
- a sub-folder of image frames (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp), in the order of the last
  number in each file name (frame_2.png before frame_10.png); image files without a number are left out,
  and two files with one number are an error (their order is unknowable);
- a video file (.mp4, .avi, .mov, .mkv, .webm, .m4v, .mpg, .mpeg, .wmv), decoded by imageio's FFMPEG plugin
  with the ffmpeg binary inside the imageio-ffmpeg wheel (no system ffmpeg needed).
Hidden entries, other files and folders without image files are not clips (the log names such folders).
A folder that cannot be read and a video name that is no readable file (a dangling or looping symbolic link)
are clips that are skipped as unreadable, named in the log.

The split is by clip, on the names (folder names, video file names with their extension) before any
file is read, so a broken clip never moves another one to the other side: the names listed in DIR/test.txt
(one a line, `#` starts a comment) are the test clips when that file exists, otherwise every 10th name in
sorted order, starting with the first.

Every frame is converted to RGB or grey (`channels` 3 or 1) and resized to image_size x image_size
(bilinear, antialiased; the aspect ratio is not kept, as for KTH). Frames of different sizes, within a clip
or across clips, are all resized, never refused.

Unreadable files are found up front, named in the log and skipped while the rest suffices: each frame file's
header is read, and each video is decoded once by ffmpeg to count its frames. A broken video is left out; a
broken frame cuts its clip in two there (the frames either side of it are not consecutive). A split left
with no clip is a one-line error; so is a file that passed the check but fails to decode later.

Sampling as for KTH: `drnet_batch` draws a clip uniformly, a window of `max_step` consecutive frames inside it
(the whole clip when shorter) and four frames uniformly from that window; `sequence_batch` draws T
consecutive frames among the clips of at least T frames. All draws use the caller's torch.Generator.

Decoded frames are kept in bounded least-recently-used caches: the frames of folders one by one, and whole
videos (ffmpeg decodes a video in order, so one frame costs as much as all of them) in a second cache that
holds as many videos as fit in the same frame budget, and at least one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image

from datasets.cache import FrameCache, check_loader_sizes
from utils import DRNetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
TEST_LIST = "test.txt"
TEST_EVERY = 10
CHANNEL_CHOICES = (1, 3)
DEFAULT_CACHE_FRAMES = 20000  # per split: about 250 MB of 64x64 RGB frames
LAYOUT = "one sub-folder of numbered frames (frame_001.png, ...) or one video file (.mp4, .avi, ...) per clip"
# PIL reports broken images as OSError, and some broken chunks as SyntaxError or ValueError.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError)
_NUMBER = re.compile(r"\d+")

log = logging.getLogger("drnet")


@dataclass(frozen=True)
class Clip:
    """One clip: a run of readable frame files of a folder, or a whole video file."""

    name: str  # the folder or video file name: what the split and test.txt refer to
    length: int
    frames: tuple[Path, ...] = ()  # the frame files in order (folders)
    video: Path | None = None


def frame_number(path: Path) -> int | None:
    """The last number in a file name's stem (frame_0012.png -> 12), or None when it has none."""
    numbers = _NUMBER.findall(path.stem)
    return int(numbers[-1]) if numbers else None


def is_image(path: Path) -> bool:
    """Whether `path` is a visible file with an image suffix."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def numbered_frames(folder: Path) -> tuple[list[Path], list[Path]]:
    """A folder's image files in the order of their numbers, and those without a number."""
    by_number: dict[int, Path] = {}
    unnumbered = []
    for path in sorted(folder.iterdir()):  # sorted: the same duplicate is named on every system
        if not is_image(path):
            continue
        number = frame_number(path)
        if number is None:
            unnumbered.append(path)
        elif number in by_number:
            raise DRNetError(f"two frames numbered {number} in {folder}: {by_number[number].name} and {path.name}; "
                             "rename one so that the numbers give the order")
        else:
            by_number[number] = path
    return [by_number[number] for number in sorted(by_number)], unnumbered


def clip_entries(root: Path) -> dict[str, Path]:
    """The clips of a data root by name, in sorted order: sub-folders holding image files, and video files."""
    if not root.is_dir():
        raise DRNetError(f"no folder {root}: --data_root must hold {LAYOUT}")
    try:
        paths = sorted(root.iterdir())
    except OSError as error:
        raise DRNetError(f"cannot read --data_root {root}: {error.strerror}") from error
    entries = {}
    for path in paths:
        if path.name.startswith("."):
            continue
        if path.is_dir():
            try:
                clip = any(is_image(child) for child in path.iterdir())
            except OSError:  # unreadable: it may be a clip, so it keeps its place in the split (folder_clips)
                clip = True
            if clip:
                entries[path.name] = path
            else:
                log.info("frames: %s holds no image files, not a clip", path)
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            entries[path.name] = path
    if not entries:
        raise DRNetError(f"no clips in {root}: expected {LAYOUT}")
    return entries


def split_names(root: Path, names: list[str], split: str) -> list[str]:
    """This split's clip names: those in root/test.txt (or every 10th sorted name) for "test", the rest for "train"."""
    listing = root / TEST_LIST
    if listing.is_file():
        lines = (line.split("#", 1)[0].strip() for line in listing.read_text().splitlines())
        test = {line for line in lines if line}
        unknown = sorted(test - set(names))
        if unknown:
            raise DRNetError(f"{listing} names {len(unknown)} clip(s) not in {root} (the first: {unknown[0]}); list "
                             "folder names or video file names with their extension")
    else:
        test = set(names[::TEST_EVERY])
    chosen = [name for name in names if (name in test) == (split == "test")]
    if not chosen:
        raise DRNetError(f"no {split} clip in {root}: {len(names)} clip(s), {len(test)} of them test clips "
                         f"({'listed in ' + TEST_LIST if listing.is_file() else f'every {TEST_EVERY}th'}); "
                         "both splits need at least one")
    return chosen


def last_line(error: BaseException) -> str:
    """The last non-empty line of an error's message (ffmpeg's errors end with the reason)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def image_problem(path: Path) -> str | None:
    """None when PIL can read the image's header, else why not."""
    try:
        with Image.open(path):
            return None
    except IMAGE_ERRORS as error:
        return last_line(error)


def folder_clips(name: str, folder: Path) -> tuple[list[Clip], list[str]]:
    """The clips of a folder of frames, cut at unreadable frames, and the problems found (one line each)."""
    try:
        frames, unnumbered = numbered_frames(folder)
    except OSError as error:
        return [], [f"cannot read folder {folder} ({error.strerror}): skipped"]
    problems = [f"{len(unnumbered)} image file(s) in {folder} have no number in their name and are left out "
                f"(the first: {unnumbered[0].name})"] if unnumbered else []
    runs: list[list[Path]] = [[]]
    for path in frames:
        problem = image_problem(path)
        if problem is None:
            runs[-1].append(path)
        else:
            problems.append(f"unreadable frame {path} ({problem}): skipped, its clip is cut there")
            runs.append([])
    return [Clip(name, len(run), frames=tuple(run)) for run in runs if run], problems


def video_clip(name: str, path: Path) -> tuple[list[Clip], list[str]]:
    """A video file as a clip of its counted frames, or no clip and the problem when ffmpeg cannot decode it."""
    import imageio_ffmpeg  # here, not at the top: only video files need ffmpeg, so frame folders work without it

    if not path.is_file():
        return [], [f"video {path} is no readable file (a symbolic link to nothing, or one that loops): skipped"]
    try:
        length = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    except (OSError, RuntimeError) as error:
        return [], [f"unreadable video {path} ({last_line(error)}): skipped"]
    if length < 1:
        return [], [f"video {path} has no frames: skipped"]
    return [Clip(name, length, video=path)], []


def to_frame(image: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """A PIL image as uint8 (C, S, S): RGB or grey, resized (bilinear, antialiased) to S x S."""
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1).contiguous()


def read_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One frame file as uint8 (C, S, S); a one-line error naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return to_frame(image, image_size, channels)
    except IMAGE_ERRORS as error:
        raise DRNetError(f"cannot read frame {path}: {last_line(error)}") from error


def read_video(path: Path, image_size: int, channels: int, length: int) -> torch.Tensor:
    """The first `length` frames of a video as uint8 (T, C, S, S); a one-line error when fewer decode."""
    frames = []
    try:
        for pixels in iio.imiter(path, plugin="FFMPEG"):
            frames.append(to_frame(Image.fromarray(pixels), image_size, channels))
            if len(frames) == length:
                break
    except (OSError, RuntimeError, ValueError) as error:
        raise DRNetError(f"cannot decode video {path}: {last_line(error)}") from error
    if len(frames) < length:
        raise DRNetError(f"video {path} decoded to {len(frames)} frames, but ffmpeg counted {length}")
    return torch.stack(frames)


def uniform_below(highs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniform integer in [0, high) for every element of `highs` (int64, positive)."""
    # The modulo of a 62-bit draw: exact integers, with a bias below high / 2**62.
    return torch.randint(2**62, highs.shape, generator=generator) % highs


class FrameClips:
    """Clips of one split of a folder of frame folders and videos, decoded lazily (not thread-safe)."""

    def __init__(self, data_root: str, split: str, image_size: int, channels: int, max_step: int,
                 cache_frames: int = DEFAULT_CACHE_FRAMES) -> None:
        if split not in ("train", "test"):
            raise DRNetError(f"unknown split '{split}'; use 'train' or 'test'")
        if channels not in CHANNEL_CHOICES:
            raise DRNetError(f"frames are read as RGB (channels 3) or grey (channels 1), got channels {channels}")
        check_loader_sizes(image_size, max_step, cache_frames)
        self.split = split
        self.channels = channels
        self.image_size = image_size
        self.max_step = max_step
        root = Path(data_root)
        entries = clip_entries(root)
        self.clips: list[Clip] = []
        problems: list[str] = []
        for name in split_names(root, list(entries), split):
            read = folder_clips if entries[name].is_dir() else video_clip
            clips, found = read(name, entries[name])
            self.clips += clips
            problems += found
        for problem in problems:
            log.warning("frames %s: %s", split, problem)
        if not self.clips:
            raise DRNetError(f"no readable {split} clip in {root}: {problems[0]}"
                             + (f" (and {len(problems) - 1} more problems, in the log)" if len(problems) > 1 else ""))
        self._lengths = torch.tensor([clip.length for clip in self.clips])
        self._frames: FrameCache[torch.Tensor] = FrameCache(cache_frames)
        video_frames = [clip.length for clip in self.clips if clip.video is not None]
        self._videos: FrameCache[torch.Tensor] = FrameCache(max(1, cache_frames // max(video_frames, default=1)))
        if sum(video_frames) > cache_frames:
            log.warning("frames %s: the %d frames of its videos do not fit in the cache of %d frames, so batches "
                        "will decode videos again; folders of frames avoid that", split, sum(video_frames),
                        cache_frames)
        log.info("frames %s: %d clips (%d videos), %d frames, %d to %d per clip, from %s", split, len(self.clips),
                 len(video_frames), int(self._lengths.sum()), int(self._lengths.min()), int(self._lengths.max()), root)

    @property
    def num_clips(self) -> int:
        """Number of clips in this split."""
        return len(self.clips)

    @property
    def longest_clip(self) -> int:
        """Frames of the longest clip: no sequence of this split is longer."""
        return int(self._lengths.max())

    def _frame(self, clip: int, index: int) -> torch.Tensor:
        """Frame `index` (0-based) of a clip as uint8 (C, S, S), through the caches."""
        source = self.clips[clip]
        if source.video is not None:
            video = self._videos.get(clip, lambda: read_video(source.video, self.image_size, self.channels,
                                                              source.length))
            return video[index]
        path = source.frames[index]
        return self._frames.get(path, lambda: read_image(path, self.image_size, self.channels))

    def _gather(self, clips: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Frames at matching (clip, index) tensors of one shape, as float32 (*shape, C, S, S) in [0, 1]."""
        frames = [self._frame(int(clip), int(index)) for clip, index in zip(clips.flatten(), indices.flatten(),
                                                                            strict=True)]
        return torch.stack(frames).view(*indices.shape, *frames[0].shape).float().div_(255)

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        """Raise DRNetError unless the batch size is positive."""
        if batch_size < 1:
            raise DRNetError(f"batch size must be positive, got {batch_size}")

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """x_c1, x_c2, x_p1, x_p2 as (4, B, C, S, S): four frames drawn uniformly from a window of one clip."""
        self._check_batch_size(batch_size)
        clips = torch.randint(self.num_clips, (batch_size,), generator=generator)
        lengths = self._lengths[clips]
        windows = lengths.clamp(max=self.max_step)
        starts = uniform_below(lengths - windows + 1, generator)
        offsets = uniform_below(windows.expand(4, -1), generator)
        return self._gather(clips.expand(4, -1), starts + offsets)

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T, C, S, S) runs of T consecutive frames, drawn among the clips of at least T frames."""
        self._check_batch_size(batch_size)
        if length < 1:
            raise DRNetError(f"sequence length must be positive, got {length}")
        eligible = (self._lengths >= length).nonzero()[:, 0]
        if len(eligible) == 0:
            raise DRNetError(f"no {self.split} clip has {length} frames (the longest has {int(self._lengths.max())}); "
                             "use shorter sequences or longer clips")
        clips = eligible[torch.randint(len(eligible), (batch_size,), generator=generator)]
        starts = uniform_below(self._lengths[clips] - length + 1, generator)
        return self._gather(clips[:, None].expand(-1, length), starts[:, None] + torch.arange(length))
