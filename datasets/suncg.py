"""SUNCG chairs as DRNET clips: the 36 views around one chair at one elevation, loaded lazily.

SUNCG is no longer distributed by its owners, so this loader reads an existing copy laid out as
    DATA_ROOT/suncg/single_object/chair/<object>/elevation_<e>/p200-64_<i>.png
with views i = 1..36 going round the chair, 64x64 RGB. The real set names its five elevation
folders per chair with signed decimals (elevation_-1.00, elevation_-0.25, elevation_0.50, elevation_1.25,
elevation_2.00); integer names (elevation_2) are accepted too. Elevations are ordered by value, not by
name. A chair that lacks some of the elevations found in the tree loads the ones it has (the log says how
many were skipped); a chair with none is an error.

A clip is views 1..36 of one object at one elevation. The views close a circle (10° apart), so clips
are **cyclic**: a window or a sequence may start at any view and wrap from view 36 to view 1, and a
sequence longer than 36 frames goes round again instead of failing. The split is 85/15 over the sorted
object names (the first 85% train), so it is deterministic and the splits share no object.

The full set is several GB, so only the folder names are read up front; each PNG is decoded when a
batch first needs it (converted to RGB, or to grey for channels=1, and resized with antialiasing when
`image_size` is not 64) and kept in a bounded least-recently-used cache of decoded frames.

Labels for evaluation: `clip_labels()` is a (num_clips, 2) int64 tensor with the columns of
`LABEL_COLUMNS`: the object's index in `objects` (this split's sorted object names) and the rank of its
elevation in `elevations` (the sorted distinct elevation values of the whole tree, both splits, so a rank
means the same elevation in either split); `clip_sequence` gives any clip's frames. A clip's identity is
its chair; `probe_batch` draws clips of the chairs of one part (even or odd index) with their elevation
only, since the two parts hold different chairs.
"""

import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.cache import FrameCache, check_loader_sizes
from datasets.cyclic import CyclicClips
from utils import DRNetError

VIEWS_PER_CLIP = 36
TRAIN_PERCENT = 85
LABEL_COLUMNS = ("object", "elevation")
CHANNEL_CHOICES = (1, 3)
DEFAULT_CACHE_FRAMES = 20000  # about 250 MB of 64x64 RGB frames
EXPECTED_LAYOUT = ("suncg/single_object/chair/<object>/elevation_<e>/p200-64_<i>.png (e a signed decimal such "
                   "as -1.00 or 1.25, or an integer; i = 1..36)")

# A signed decimal (the real set's -1.00, 0.50, ..) or an integer; no exponent, nan or inf.
_ELEVATION_FOLDER = re.compile(r"elevation_([+-]?\d*\.?\d+)")

log = logging.getLogger("drnet")


def suncg_chair_dir(data_root: str) -> Path:
    """The folder that holds one subfolder per chair."""
    return Path(data_root) / "suncg" / "single_object" / "chair"


def view_file_name(view: int) -> str:
    """File name of view `view` (1-based, as in the dataset) inside an elevation folder."""
    return f"p200-64_{view}.png"


def elevation_value(folder_name: str) -> float | None:
    """The elevation an `elevation_<e>` folder name stands for, or None when the name is not one."""
    match = _ELEVATION_FOLDER.fullmatch(folder_name)
    return float(match.group(1)) if match else None


def elevation_folders(object_folder: Path) -> dict[float, Path]:
    """An object's elevation folders by elevation value; a one-line error when it has none or two name one value."""
    found: dict[float, Path] = {}
    for folder in sorted(object_folder.iterdir()):  # sorted: the same folder is named first on every system
        value = elevation_value(folder.name)
        if value is None or not folder.is_dir():
            continue
        if value in found:  # elevation_2 beside elevation_2.00: which one holds the views is unknowable
            raise DRNetError(f"two folders for elevation {value:g} in {object_folder}: {found[value].name} and "
                             f"{folder.name}")
        found[value] = folder
    if not found:
        raise DRNetError(f"no elevation_<e> folders in {object_folder}; expected {EXPECTED_LAYOUT}")
    return found


def split_objects(objects: list[str], split: str) -> list[str]:
    """This split's objects: the first 85% of the sorted names for "train", the rest for "test"."""
    ordered = sorted(objects)
    if len(ordered) < 2:
        raise DRNetError(f"SUNCG chairs need at least 2 objects to split into train and test, "
                         f"found {len(ordered)}")
    # Floor of 85%, in integers so no float rounding decides the boundary; with at least 2 objects
    # both parts are non-empty.
    train_count = len(ordered) * TRAIN_PERCENT // 100
    return ordered[:train_count] if split == "train" else ordered[train_count:]


def read_view(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One view PNG as uint8 (C, S, S); a clear error naming the file when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.array(image, dtype=np.uint8)
    # PIL reports broken files as OSError, and some broken PNG chunks as SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError) as error:
        raise DRNetError(f"cannot read SUNCG view {path}: {error}") from error
    frame = torch.from_numpy(pixels)
    return frame.unsqueeze(0) if channels == 1 else frame.permute(2, 0, 1).contiguous()


class SuncgClips(CyclicClips):
    """SUNCG chair clips of one split: 36 views round a chair at one elevation (cyclic), PNGs read lazily."""

    clip_columns = LABEL_COLUMNS
    identity_columns = ("object",)
    label_columns = ("elevation",)

    def __init__(self, data_root: str, split: str, image_size: int, channels: int, max_step: int,
                 cache_frames: int = DEFAULT_CACHE_FRAMES) -> None:
        if split not in ("train", "test"):
            raise DRNetError(f"unknown SUNCG split '{split}'; use 'train' or 'test'")
        if channels not in CHANNEL_CHOICES:
            raise DRNetError(f"SUNCG chairs are RGB: channels must be 3 (or 1 for grey), got {channels}")
        check_loader_sizes(image_size, max_step, cache_frames)
        root = suncg_chair_dir(data_root)
        if not root.is_dir():
            raise DRNetError(f"SUNCG chairs not found at {root}: the dataset is no longer distributed by its "
                             f"owners; point --data_root at a folder holding an existing copy as "
                             f"{EXPECTED_LAYOUT}")
        self.channels = channels
        self.image_size = image_size
        self.max_step = max_step
        self.clip_length = VIEWS_PER_CLIP
        names = sorted(path.name for path in root.iterdir() if path.is_dir())
        self.objects = split_objects(names, split)
        # The elevations of the whole tree, not only of this split, so that a label means one elevation in
        # both splits even when a split lacks some elevation altogether.
        folders = {name: elevation_folders(root / name) for name in names}
        self.elevations: list[float] = sorted(set().union(*folders.values()))
        # The probes are logistic regressions, which need integer classes: an elevation's label is its rank
        # among the sorted values (elevations[label] is the value), so labels follow the elevations' order.
        rank = {value: index for index, value in enumerate(self.elevations)}
        self._clip_folders: list[Path] = []
        labels = []
        for object_index, name in enumerate(self.objects):
            for value, folder in sorted(folders[name].items()):
                self._clip_folders.append(folder)
                labels.append((object_index, rank[value]))
        self._labels = torch.tensor(labels, dtype=torch.int64)
        self._cache: FrameCache[torch.Tensor] = FrameCache(cache_frames)
        shown = ", ".join(f"{value:g}" for value in self.elevations)
        log.info("SUNCG chairs %s: %d chairs, %d clips, elevations %s", split, len(self.objects), len(labels), shown)
        lacking = [name for name in self.objects if len(folders[name]) < len(self.elevations)]
        if lacking:
            skipped = len(self.objects) * len(self.elevations) - len(labels)
            log.info("SUNCG chairs %s: %d of %d chairs lack some elevation (the first: %s); their %d missing "
                     "clips are skipped", split, len(lacking), len(self.objects), lacking[0], skipped)

    def _frame(self, clip: int, view: int) -> torch.Tensor:
        """Decoded view `view` (0-based) of a clip as uint8 (C, S, S), through the bounded cache."""
        path = self._clip_folders[clip] / view_file_name(view + 1)
        return self._cache.get((clip, view), lambda: read_view(path, self.image_size, self.channels))

    def _gather(self, clips: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Frames at matching (clip, view) index tensors of one shape, as float32 (*shape, C, S, S) in [0, 1]."""
        frames = [self._frame(int(clip), int(view)) for clip, view in zip(clips.flatten(), views.flatten(),
                                                                         strict=True)]
        return torch.stack(frames).view(*views.shape, *frames[0].shape).float().div_(255)
