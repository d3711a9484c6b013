"""Folders of frames for `--dataset frames`, written by the tests.

Every frame encodes what it shows: the left half has grey level 8 * (frame + 1) (frame counted from 0), the
right half a level that names the clip, as in the fake KTH videos of fakes/kth.py.
"""

from pathlib import Path

import numpy as np
from PIL import Image


def write_clip(folder: Path, num_frames: int, clip_level: int, size: tuple[int, int] = (64, 64),
               pattern: str = "frame_{}.png") -> None:
    """A folder of grey frames (width, height) named by `pattern` (unpadded numbers: a name sort misorders them)."""
    folder.mkdir(parents=True)
    width, height = size
    for frame in range(num_frames):
        pixels = np.full((height, width), clip_level, dtype=np.uint8)
        pixels[:, :width // 2] = 8 * (frame + 1)
        Image.fromarray(pixels).save(folder / pattern.format(frame))
