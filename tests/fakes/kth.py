"""A tiny synthetic KTH in the real raw format: MJPEG AVIs and a sequence file with the real one's quirks.

The fake videos encode what each frame is in its pixels: the left half has grey level 8 * (frame + 1)
(frame counted from 0), the right half a level that identifies the video. So tests can tell from a
loaded batch which video and frame every image came from.
"""

from pathlib import Path

import imageio_ffmpeg
import numpy as np

# name -> (frames in the AVI, grey level of its right half)
FAKE_VIDEOS = {
    "person01_boxing_d1": (30, 40),
    "person02_walking_d2": (24, 80),
    "person17_walking_d2": (30, 120),
    "person18_boxing_d3": (20, 160),
    "person03_jogging_d1": (10, 200),  # has no entry in the sequence file
    "person16_boxing_d4": (12, 240),
}
# The kinds of irregularity the real file has: a header, an entry broken over two lines (whose last range
# runs past the video's 24 frames), a typo, a video marked missing, and the file's own split declaration.
SEQUENCES = (
    "Action sequences of the KTH dataset\n"
    "\n"
    "person01_boxing_d1\t\tframes\t1-10, 11-20, 21-30\n"
    "person02_walking_d2\t\tframes\t1-12,\n"
    "\t\t13-30\n"
    "person17_walking_d2\t\tframes\t1-6, 7-30\n"
    "person18_boxing_d3\t\tframes\t5-20\n"
    "person16_boxing_d4\t\tframes\t1-12\n"
    "person04_running_d4\t\tframes\t1-x\n"
    "person13_handclapping_d3\t\t*missing*\n"
    "Training:\tperson11, person12\n"
)


def write_fake_avi(path: Path, num_frames: int, video_level: int) -> None:
    """A 160x120 grey 25 fps MJPEG AVI whose pixels say which video and frame they belong to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (160, 120), pix_fmt_in="gray", pix_fmt_out="yuvj444p", fps=25, codec="mjpeg",
        quality=10, macro_block_size=1, ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in range(num_frames):
        pixels = np.full((120, 160), video_level, dtype=np.uint8)
        pixels[:, :80] = 8 * (frame + 1)
        writer.send(pixels.tobytes())
    writer.close()


def write_fake_raw(data_root: Path) -> None:
    """Write DATA_ROOT/raw/<class>/*_uncomp.avi for every fake video and DATA_ROOT/raw/00sequences.txt."""
    for name, (num_frames, level) in FAKE_VIDEOS.items():
        action = name.split("_")[1]
        write_fake_avi(data_root / "raw" / action / f"{name}_uncomp.avi", num_frames, level)
    (data_root / "raw" / "00sequences.txt").write_text(SEQUENCES)
