"""A tiny smallNORB in the real binary-matrix format (plain or gzipped), written by the tests.

Every left-camera image encodes what it shows: its top half holds 10 * azimuth_index + 5 and its bottom
half a code of its (category, instance, elevation, lighting); right-camera images are all 255. The rows
are shuffled in the files, as the real files are not stored clip by clip.
"""

import gzip
import struct

import numpy as np

from datasets import norb
from datasets.norb import norb_dir, norb_file_names

OBJECTS = {"train": [(0, 4), (0, 6), (3, 7)], "test": [(1, 0), (2, 5)]}  # (category, instance)
ELEVATIONS = (1, 6)
LIGHTINGS = (0, 4)
AZIMUTH_VALUES = tuple(range(0, 36, 2))
SOURCE_SIZE = 96
ALL_CLIP_KEYS = sorted((category, instance, elevation, lighting)
                       for objects in OBJECTS.values() for category, instance in objects
                       for elevation in ELEVATIONS for lighting in LIGHTINGS)
CLIP_CODE = {key: 180 + index for index, key in enumerate(ALL_CLIP_KEYS)}  # 180..199, below 255


def write_matrix(path, array: np.ndarray, magic: int) -> None:
    """Write `array` as a NORB binary matrix: magic, ndim, max(ndim, 3) sizes padded with 1, data."""
    sizes = list(array.shape) + [1] * (3 - array.ndim)
    dtype = "<u1" if magic == norb.MAGIC_UINT8 else "<i4"
    payload = struct.pack(f"<ii{len(sizes)}i", magic, array.ndim, *sizes) + array.astype(dtype).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dat, cat, info) of a tiny split, rows shuffled, images encoding azimuth and clip."""
    rows = [(category, instance, elevation, azimuth, lighting)
            for category, instance in OBJECTS[split] for elevation in ELEVATIONS
            for lighting in LIGHTINGS for azimuth in AZIMUTH_VALUES]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    dat = np.full((len(rows), 2, SOURCE_SIZE, SOURCE_SIZE), 255, dtype=np.uint8)
    for row, (category, instance, elevation, azimuth, lighting) in enumerate(rows):
        dat[row, 0, :SOURCE_SIZE // 2] = 10 * (azimuth // 2) + 5
        dat[row, 0, SOURCE_SIZE // 2:] = CLIP_CODE[(category, instance, elevation, lighting)]
    table = np.array(rows, dtype=np.int32)
    return dat, table[:, 0], table[:, [1, 2, 3, 4]]


def write_split(data_root, split: str, gz: bool) -> dict:
    """Write the three files of a tiny split under data_root/norb; return their paths by kind."""
    directory = norb_dir(str(data_root))
    directory.mkdir(parents=True, exist_ok=True)
    dat, cat, info = split_arrays(split)
    suffix = ".gz" if gz else ""
    paths = {kind: directory / (name + suffix) for kind, name in norb_file_names(split).items()}
    write_matrix(paths["dat"], dat, norb.MAGIC_UINT8)
    write_matrix(paths["cat"], cat, norb.MAGIC_INT32)
    write_matrix(paths["info"], info, norb.MAGIC_INT32)
    return paths
