"""Optional TensorBoard mirror of a run (`--tensorboard`): the CSV metrics, the pictures and the roll-outs.

The CSV files and PNG/GIF pictures stay the record of a run; this only copies them, as they are written, into
event files under `<run directory>/tensorboard`, so `tensorboard --logdir runs` shows every run side by side.
Roll-outs go in as the GIFs the LSTM stage writes anyway, in the video summary TensorBoard itself uses for
`add_video` (an animated GIF in an image summary), so no video encoder is needed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from utils import check_writable

INSTALL_HINT = "pip install tensorboard==2.21.0"


def tensorboard_missing() -> str | None:
    """Why --tensorboard cannot run here (the package is not installed), or None."""
    if importlib.util.find_spec("tensorboard") is None:
        return f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}"
    return None


class Board:
    """Writes scalars and the run's picture files into TensorBoard event files in `run_dir/tensorboard`."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        # Tried first: the writer's own thread would meet an unwritable folder with a traceback of its own.
        folder = Path(run_dir) / "tensorboard"
        check_writable(folder, "--tensorboard True event files")
        self.writer = SummaryWriter(str(folder))

    def scalars(self, group: str, iteration: int, values: dict[str, float]) -> None:
        """One point per metric, tagged `group/name` (group: the CSV file's name, e.g. test_metrics)."""
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, iteration)

    def pictures(self, iteration: int, paths: Iterable[Path]) -> None:
        """PNG pictures as images and GIF roll-outs as videos, tagged by their name without the iteration."""
        for path in paths:
            tag = path.stem.rsplit("_", 1)[0]  # analogy_0001250 -> analogy
            if path.suffix == ".png":
                image = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(tag, image, iteration, dataformats="HWC")
            elif path.suffix == ".gif":
                self.writer._get_file_writer().add_summary(gif_summary(tag, path), iteration)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def gif_summary(tag: str, path: Path):
    """A TensorBoard image summary holding the animated GIF at `path`: how TensorBoard shows videos."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    with Image.open(path) as gif:
        width, height = gif.size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=path.read_bytes())
    return Summary(value=[Summary.Value(tag=tag, image=image)])
