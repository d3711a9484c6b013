"""A tiny SUNCG chair tree in the real layout (64x64 RGB PNGs, 36 views), written by the tests.

Every view encodes what it shows: red = 7 * view (view 1..36), green = a code of the object, blue = a
code of the elevation's value. The elevation folders have the real set's names, signed decimals whose
name order (-0.25 before -1.00) differs from their value order.
"""

from PIL import Image

from datasets.suncg import suncg_chair_dir, view_file_name

OBJECTS = [f"{name}_chair" for name in ("f3", "a1", "c9", "b2", "h0", "e5", "d4", "g7")]  # unsorted
SORTED_OBJECTS = sorted(OBJECTS)
ELEVATIONS = ("1.25", "-1.00", "0.50", "2.00", "-0.25")  # the real set's folder names, elevation_<e>
ELEVATION_VALUES = [-1.0, -0.25, 0.5, 1.25, 2.0]  # their values in order: the loader's `elevations`
VIEWS = range(1, 37)


def object_code(name: str) -> int:
    """Green value that identifies an object."""
    return 20 * SORTED_OBJECTS.index(name) + 10


def elevation_code(elevation: float) -> int:
    """Blue value that identifies an elevation value (a multiple of 0.25 in -10..10)."""
    return round(128 + 12 * elevation)


def write_tree(data_root, objects=OBJECTS, elevations: tuple[str | int, ...] = ELEVATIONS) -> None:
    """Write the chair tree with one PNG per (object, elevation folder name, view) and some unrelated entries."""
    chair_dir = suncg_chair_dir(str(data_root))
    for name in objects:
        for elevation in elevations:
            folder = chair_dir / name / f"elevation_{elevation}"
            folder.mkdir(parents=True)
            for view in VIEWS:
                colour = (7 * view, object_code(name), elevation_code(float(elevation)))
                Image.new("RGB", (64, 64), colour).save(folder / view_file_name(view))
        (chair_dir / name / "notes.txt").write_text("not an elevation folder")
    (chair_dir / "README").write_text("not an object folder")
