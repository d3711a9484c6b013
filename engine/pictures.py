"""Pictures of a run: image grids, the analogy grid, roll-out strips with their GIF and MP4, and loss curves.

Every picture is a file a person opens: PNG grids with a thin white border between cells; roll-outs framed in
green (observed), red (generated) and grey (ground truth), as a strip of every k-th frame and as an animation
of every frame with its rows labelled; curves with a running mean over the per-batch noise.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from models import DRNet, DRNetPredictor
from utils import read_metrics

log = logging.getLogger("drnet")

ANALOGY_FRAMES = 10  # frames of the periodic analogy grid's test clips (fewer when --max_step is smaller)
STRIP_COLUMNS = 50  # at most this many generated frames per strip row: longer rollouts show every k-th
BORDER = 2  # px of coloured frame around each picture cell
OBSERVED, GENERATED, GROUND_TRUTH = (0.0, 0.8, 0.0), (0.9, 0.0, 0.0), (0.5, 0.5, 0.5)  # RGB frame colours
GIF_FRAME_MS = 100
GRID_PADDING = 2  # px between the cells of an animation frame
ROW_LABELS = {"observed": OBSERVED, "generated": GENERATED, "ground truth": GROUND_TRUTH}  # text: its colour
LABEL_MARGIN = 4  # px of white either side of a row label


def plot_curves(panels: dict[str, list[tuple[Path, str]]], path: Path, smooth: int = 20) -> None:
    """Save a PNG with one panel per title, each plotting (csv file, column) series against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for csv_path, column in series:
            rows = [r for r in read_metrics(csv_path) if not math.isnan(r.get(column, math.nan))]
            if not rows:
                continue
            x = [r["iteration"] for r in rows]
            y = torch.tensor([r[column] for r in rows])
            ax.plot(x, y.numpy(), alpha=0.3 if len(rows) > smooth else 1.0, label=column)
            if len(rows) > smooth:  # a running mean shows the trend under the per-batch noise
                kernel = torch.ones(1, 1, smooth) / smooth
                trend = torch.nn.functional.conv1d(y[None, None], kernel)[0, 0]
                ax.plot(x[smooth - 1:], trend.numpy(), color=ax.lines[-1].get_color(), label=f"{column} (mean)")
        values = [y for line in ax.lines for y in line.get_ydata()]
        if values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")  # losses fall by orders of magnitude: a linear axis hides the later progress
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if ax.lines:  # a panel whose CSV has no rows yet (a run resumed at its end) stays empty, without a legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_image_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Save images (N, C, H, W) in [0, 1] as one PNG with `columns` per row and a thin white border."""
    from torchvision.utils import save_image

    save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=columns, padding=2, pad_value=1.0)


@torch.no_grad()
def save_analogy_grid(model: DRNet, clips: torch.Tensor, path: Path) -> None:
    """Save the analogy grid of clips (N, T, C, S, S): row i is clip i's frame 0 rendered in each pose of clip 0."""
    pose_clip, content_frames = clips[0], clips[1:, 0]
    content = model.encode_content(content_frames)
    pose = model.encode_pose(pose_clip)
    cells = [model.decode(content.row(i).expand(len(pose)), pose)
             for i in range(len(content_frames))]
    blank = torch.ones_like(pose_clip[:1])
    grid = [torch.cat([blank, pose_clip])] + [torch.cat([content_frames[i:i + 1], row]) for i, row in enumerate(cells)]
    save_image_grid(torch.cat(grid), path, columns=len(pose_clip) + 1)


def framed(frames: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """Frames (N, C, H, W), grey or RGB, as RGB (N, 3, H + 2*BORDER, W + 2*BORDER) inside a coloured frame."""
    rgb = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
    n, _, height, width = rgb.shape
    cells = torch.tensor(colour, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    cells = cells.repeat(n, 1, height + 2 * BORDER, width + 2 * BORDER)
    cells[:, :, BORDER:-BORDER, BORDER:-BORDER] = rgb
    return cells


def strip_every(rollout_len: int) -> int:
    """Show every k-th generated frame in a strip, so that a row holds at most STRIP_COLUMNS of them."""
    return math.ceil(rollout_len / STRIP_COLUMNS)


@torch.no_grad()
def save_rollout(model: DRNetPredictor, clips: torch.Tensor, n_past: int, rollout_len: int, out_dir: Path,
                 name: str) -> tuple[Path, Path, Path | None]:
    """Roll clips (N, T, C, H, W) out `rollout_len` frames from `n_past`; save `<name>_everyK.png`, `.gif`, `.mp4`.

    Each strip row pair is: observed frames (green) then generated ones (red), and under it the ground
    truth (grey) where the clip has it. The strip shows every K-th generated frame. The GIF and MP4 show
    every frame, one column per clip, with the rows labelled; returns the strip, the GIF and the MP4
    (None where ffmpeg could not write it).
    """
    generated = model.predict(clips[:, :n_past], rollout_len).cpu()
    clips = clips.cpu()
    every = strip_every(rollout_len)
    shown_times = list(range(n_past)) + [n_past + step - 1 for step in range(every, rollout_len + 1, every)]

    def predicted_cells(i: int, times: list[int]) -> torch.Tensor:
        observed = [framed(clips[i, t:t + 1], OBSERVED) for t in times if t < n_past]
        future = [framed(generated[i, t - n_past:t - n_past + 1], GENERATED) for t in times if t >= n_past]
        return torch.cat(observed + future)

    def truth_cells(i: int, times: list[int]) -> torch.Tensor:
        # White cells past the end of the ground truth (finite datasets end before a long rollout does).
        blank = torch.ones_like(framed(clips[i, :1], GROUND_TRUTH))
        return torch.cat([framed(clips[i, t:t + 1], GROUND_TRUTH) if t < clips.shape[1] else blank for t in times])

    rows = [cells for i in range(len(clips)) for cells in (predicted_cells(i, shown_times),
                                                            truth_cells(i, shown_times))]
    strip = out_dir / f"{name}_every{every}.png"
    save_image_grid(torch.cat(rows), strip, columns=len(shown_times))

    frames = []
    for t in range(n_past + rollout_len):
        cells = torch.cat([torch.cat([predicted_cells(i, [t]) for i in range(len(clips))]),
                           torch.cat([truth_cells(i, [t]) for i in range(len(clips))])])
        grid = make_grid(cells, nrow=len(clips), padding=GRID_PADDING, pad_value=1.0)
        image = Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy())
        frames.append(labelled(image, ["observed" if t < n_past else "generated", "ground truth"], cells.shape[2]))
    animation = out_dir / f"{name}.gif"
    frames[0].save(animation, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
    return strip, animation, write_mp4(frames, out_dir / f"{name}.mp4")


def label_strip_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Width in px of the strip that holds the longest row label, the same in every frame of an animation."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max(math.ceil(draw.textlength(text, font=font)) for text in ROW_LABELS) + 2 * LABEL_MARGIN


def labelled(grid: Image.Image, labels: list[str], cell_height: int) -> Image.Image:
    """`grid` (rows of `cell_height` px cells) with a white strip on its left naming each row in its frame colour.

    Both sides are made even, which H.264 in the usual yuv420p needs, so that the GIF and MP4 frames match.
    """
    font = ImageFont.load_default()
    strip = label_strip_width(font)
    width, height = strip + grid.width, grid.height
    canvas = Image.new("RGB", (width + width % 2, height + height % 2), (255, 255, 255))
    canvas.paste(grid, (strip, 0))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(labels):
        left, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        middle = GRID_PADDING + row * (cell_height + GRID_PADDING) + cell_height // 2
        colour = tuple(round(255 * c) for c in ROW_LABELS[text])
        draw.text((LABEL_MARGIN - left, middle - (top + bottom) // 2), text, fill=colour, font=font)
    return canvas


def write_mp4(frames: list[Image.Image], path: Path) -> Path | None:
    """Write the frames as an H.264 MP4 at the GIF's pace and return its path; None, with a warning, if ffmpeg fails."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (without it imageio would hand .mp4 to another plugin, which fails oddly)

        # macro_block_size 1: keep the frame size, which `labelled` already made even, instead of resizing.
        with imageio.get_writer(path, format="FFMPEG", fps=1000 / GIF_FRAME_MS, codec="libx264", quality=8,
                                macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame))
        # ffmpeg can fail without imageio raising: then the file is missing or empty.
        if not path.is_file() or path.stat().st_size == 0:
            raise OSError("ffmpeg wrote nothing")
    except (ImportError, RuntimeError, ValueError, OSError) as error:  # no imageio-ffmpeg, no ffmpeg binary, ...
        path.unlink(missing_ok=True)
        log.warning("warning: %s not written (%s: %s); the GIF shows the same frames", path.name,
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "no detail")
        return None
    return path
