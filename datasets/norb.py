"""smallNORB as DRNET clips: one toy at a fixed elevation and lighting, seen from its 18 azimuths in order.

Files, under `DATA_ROOT/norb/`, each plain or gzipped (`.gz`, as distributed at `NORB_URL`):
    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat   -> split "train" (instances 4,6,7,8,9)
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat    -> split "test"  (instances 0,1,2,3,5)
Download them with `python -m datasets.prepare.norb_download DATA_ROOT` (from the repository root).
`dat` holds (24300, 2, 96, 96) uint8 stereo pairs, `cat` the category (0-4) of each pair and `info` its
(instance, elevation 0-8, azimuth 0,2,..,34, lighting 0-5).

NORB binary-matrix format, all integers little-endian int32:
    magic    0x1E3D4C55 for uint8 data (`dat`), 0x1E3D4C54 for int32 data (`cat`, `info`)
    ndim     number of dimensions
    dims     max(ndim, 3) sizes: at least three are always stored, the unused ones are 1, so the
             1-d `cat` and the 2-d `info` files both have a 20-byte header and `dat` a 24-byte one
    data     prod(dims[:ndim]) values in C order (last index fastest), nothing after them
The official files' headers (both splits): `dat` magic 0x1E3D4C55, ndim 4, dims 24300 2 96 96 (a
447,897,624-byte file); `cat` 0x1E3D4C54, ndim 1, dims 24300 1 1 (97,220 bytes); `info` 0x1E3D4C54,
ndim 2, dims 24300 4 1 (388,820 bytes).

A clip is one (category, instance, elevation, lighting) with its 18 azimuths in azimuth order, left
camera only, resized once to `image_size` (antialiased) and kept in memory as uint8 (about 100 MB per
split at 64 px). The azimuths go round the full circle in 20° steps, so clips are **cyclic**: a window
or a sequence may start at any azimuth and wrap from 340° to 0°, and a sequence longer than 18 frames
goes round again instead of failing.

Labels for evaluation: `clip_labels()` is a (num_clips, 4) int64 tensor with the columns of
`LABEL_COLUMNS` (category, instance, elevation, lighting), and `clip_sequence` gives any clip's frames.
A clip's identity is its toy, (category, instance); `probe_batch` draws clips of the toys of one part
(even or odd rank) with their category, elevation and lighting: the instance is left out, since the two
parts hold different toys.
"""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets.cyclic import CyclicClips
from utils import DRNetError

NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
MAGIC_UINT8 = 0x1E3D4C55
MAGIC_INT32 = 0x1E3D4C54
SPLIT_FILE_PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
AZIMUTHS = tuple(range(0, 36, 2))  # stored values; times 10 gives degrees
LABEL_COLUMNS = ("category", "instance", "elevation", "lighting")
LEFT_CAMERA = 0
CHANNEL_CHOICES = (1, 3)  # NORB is grey; 3 repeats the grey value so RGB models can use it

_DTYPE_OF_MAGIC = {MAGIC_UINT8: np.dtype("<u1"), MAGIC_INT32: np.dtype("<i4")}
_MAX_NDIM = 16  # far above any real file; a larger count means the header is garbage
_RESIZE_CHUNK = 1024  # images resized at once: bounds the float32 working memory to ~40 MB


def norb_dir(data_root: str) -> Path:
    """The folder that holds (or will hold) the smallNORB files."""
    return Path(data_root) / "norb"


def norb_file_names(split: str) -> dict[str, str]:
    """The uncompressed file names of one split, keyed by kind ("dat", "cat", "info")."""
    prefix = SPLIT_FILE_PREFIX[split]
    return {kind: f"{prefix}-{kind}.mat" for kind in ("dat", "cat", "info")}


def parse_norb_header(raw: bytes, path: Path, expected_magic: int) -> tuple[tuple[int, ...], int]:
    """The sizes a NORB binary-matrix header at the start of `raw` gives, and the header's length in bytes."""
    if len(raw) < 8:
        raise DRNetError(f"smallNORB file {path} is truncated: {len(raw)} bytes, shorter than a header")
    magic, ndim = struct.unpack_from("<ii", raw, 0)
    if magic != expected_magic:
        raise DRNetError(f"smallNORB file {path} has magic number {magic & 0xFFFFFFFF:#x}, "
                         f"expected {expected_magic:#x}: wrong or corrupt file")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DRNetError(f"smallNORB file {path} is corrupt: its header gives {ndim} dimensions")
    stored = max(ndim, 3)  # at least three sizes always: the official -cat (ndim 1) stores 24300 1 1
    header_bytes = 8 + 4 * stored
    if len(raw) < header_bytes:
        raise DRNetError(f"smallNORB file {path} is truncated inside its header ({len(raw)} bytes)")
    sizes = struct.unpack_from(f"<{stored}i", raw, 8)
    dims = sizes[:ndim]
    if min(dims) < 0:
        raise DRNetError(f"smallNORB file {path} is corrupt: negative size in {dims}")
    if any(size != 1 for size in sizes[ndim:]):  # the format pads with 1s: anything else is not a NORB header
        raise DRNetError(f"smallNORB file {path} is corrupt: its header gives {ndim} dimensions and pads "
                         f"the sizes {sizes} with {sizes[ndim:]}, not with 1s")
    return dims, header_bytes


def read_norb_matrix(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read one NORB binary-matrix file (plain or `.gz`), checking its magic number and its size."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DRNetError(f"cannot read smallNORB file {path}: {error}") from error
    dims, header_bytes = parse_norb_header(raw, path, expected_magic)
    dtype = _DTYPE_OF_MAGIC[expected_magic]
    count = math.prod(dims)
    expected_bytes = header_bytes + count * dtype.itemsize
    if len(raw) != expected_bytes:
        problem = "truncated" if len(raw) < expected_bytes else "corrupt (extra bytes after the data)"
        raise DRNetError(f"smallNORB file {path} is {problem}: {len(raw)} bytes, its header "
                         f"{tuple(dims)} needs {expected_bytes}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header_bytes).reshape(dims)


def _find_norb_file(data_root: str, name: str) -> Path:
    """The plain or gzipped copy of `name` in `DATA_ROOT/norb/`; a clear error when there is neither."""
    directory = norb_dir(data_root)
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DRNetError(f"smallNORB file {name} (or {name}.gz) not found in {directory}: download the files with "
                     f"`python -m datasets.prepare.norb_download {data_root}`, or by hand: the six smallnorb-*.mat.gz "
                     f"files from {NORB_URL} into that folder")


def _group_into_clips(categories: np.ndarray, info: np.ndarray,
                      info_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row order that puts each clip's 18 azimuths together, in azimuth order; and each clip's labels."""
    labels = np.stack([categories, info[:, 0], info[:, 1], info[:, 3]], axis=1)
    azimuths = info[:, 2]
    # np.lexsort sorts by its last key first: category, instance, elevation, lighting, then azimuth.
    order = np.lexsort((azimuths, labels[:, 3], labels[:, 2], labels[:, 1], labels[:, 0]))
    frames_per_clip = len(AZIMUTHS)
    corrupt = DRNetError(f"smallNORB file {info_path} is corrupt: every (category, instance, elevation, "
                         "lighting) must appear with each azimuth 0, 2, .., 34 exactly once")
    if len(order) == 0 or len(order) % frames_per_clip:
        raise corrupt
    # After sorting, every block of 18 rows must share one label and hold the azimuths 0, 2, .., 34
    # in order: that holds if and only if every clip is complete and has no duplicates.
    clip_labels = labels[order].reshape(-1, frames_per_clip, labels.shape[1])
    clip_azimuths = azimuths[order].reshape(-1, frames_per_clip)
    if not ((clip_labels == clip_labels[:, :1]).all() and (clip_azimuths == AZIMUTHS).all()):
        raise corrupt
    return order, clip_labels[:, 0]


def _resize_images(dat: np.ndarray, rows: np.ndarray, image_size: int) -> torch.Tensor:
    """Left-camera images of `rows`, resized with antialiasing to image_size², as (len(rows), S, S) uint8."""
    resized = torch.empty((len(rows), image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(rows), _RESIZE_CHUNK):
        chunk_rows = rows[start:start + _RESIZE_CHUNK]
        images = torch.from_numpy(dat[chunk_rows, LEFT_CAMERA].astype(np.float32))
        if images.shape[-2:] != (image_size, image_size):
            images = F.interpolate(images[:, None], size=(image_size, image_size), mode="bilinear",
                                   align_corners=False, antialias=True)[:, 0]
        resized[start:start + len(chunk_rows)] = images.round().clamp(0, 255).to(torch.uint8)
    return resized


def load_norb_split(data_root: str, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (frames (num_clips, 18, S, S) uint8 in azimuth order, labels (num_clips, 4) int64)."""
    paths = {kind: _find_norb_file(data_root, name) for kind, name in norb_file_names(split).items()}
    dat = read_norb_matrix(paths["dat"], MAGIC_UINT8)
    categories = read_norb_matrix(paths["cat"], MAGIC_INT32)
    info = read_norb_matrix(paths["info"], MAGIC_INT32)
    if dat.ndim != 4 or dat.shape[1] != 2:
        raise DRNetError(f"smallNORB file {paths['dat']} holds shape {dat.shape}, expected (N, 2, H, W)")
    if categories.shape != (len(dat),):
        raise DRNetError(f"smallNORB file {paths['cat']} holds shape {categories.shape}, "
                         f"expected ({len(dat)},)")
    if info.shape != (len(dat), 4):
        raise DRNetError(f"smallNORB file {paths['info']} holds shape {info.shape}, "
                         f"expected ({len(dat)}, 4)")
    order, labels = _group_into_clips(categories, info, paths["info"])
    frames = _resize_images(dat, order, image_size)
    return frames.view(len(labels), len(AZIMUTHS), image_size, image_size), torch.from_numpy(labels).long()


class NorbClips(CyclicClips):
    """smallNORB clips of one split: a toy at fixed elevation and lighting sweeping 18 azimuths (cyclic)."""

    clip_columns = LABEL_COLUMNS
    identity_columns = ("category", "instance")
    label_columns = ("category", "elevation", "lighting")

    def __init__(self, data_root: str, split: str, image_size: int, channels: int, max_step: int) -> None:
        if split not in SPLIT_FILE_PREFIX:
            raise DRNetError(f"unknown smallNORB split '{split}'; use 'train' or 'test'")
        if channels not in CHANNEL_CHOICES:
            raise DRNetError(f"smallNORB is grey: channels must be 1 (or 3, grey repeated), got {channels}")
        if image_size < 1 or max_step < 1:
            raise DRNetError(f"image_size and max_step must be positive, got {image_size} and {max_step}")
        self.channels = channels
        self.image_size = image_size
        self.max_step = max_step
        self.clip_length = len(AZIMUTHS)
        self._frames, self._labels = load_norb_split(data_root, split, image_size)

    def _gather(self, clips: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Frames at matching (clip, view) index tensors of one shape, as float32 (*shape, C, S, S) in [0, 1]."""
        grey = self._frames[clips, views].unsqueeze(-3).float().div_(255)
        return grey.expand(*grey.shape[:-3], self.channels, -1, -1).contiguous()
