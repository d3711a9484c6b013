"""Convert the downloaded KTH videos into grey PNG frames plus one JSON index.

Usage: ``python -m datasets.prepare.convert_kth --data_root DIR --image_width 128 [--workers N]``
(after ``sh datasets/prepare/download_kth.sh DIR``).

Input: every ``personXX_<class>_dY_uncomp.avi`` anywhere under ``DIR/raw/`` and ``DIR/raw/00sequences.txt``.
Each video is decoded by the ffmpeg executable shipped in the imageio-ffmpeg wheel, converted to grey and
resized to SxS (S = 64 or 128; the 160x120 frame is stretched to a square, like a plain ``ffmpeg -s SxS``).

Output layout::

    DIR/processed/<S>/<video>/<i:05d>.png   frame i of the video, i = 0, 1, ..., num_frames - 1
    DIR/processed/<S>/index.json

Frame numbers: 00sequences.txt counts frames from 1 with inclusive ranges ("1-95" = the first 95
frames). Everything under processed/ counts from 0 with half-open ranges: file ``00000.png`` is frame 1
of the sequence file, and the range "a-b" becomes the segment ``[a - 1, b)`` (stored as the pair
``[a - 1, b]``), i.e. files a-1 .. b-1.
Segments reaching past the decoded frames are clipped (with a warning); empty ones are dropped.

``index.json``::

    {"image_size": S,
     "videos": [{"name": "person01_boxing_d1", "class": "boxing", "person": 1, "scenario": 1,
                 "split": "train", "num_frames": 360, "segments": [[0, 95], [95, 185], ...]}, ...]}

Split by person: 1-16 train, 17-25 test. Videos without a sequence entry are skipped with a warning.
A video is decoded into ``.partial-<video>/``, renamed to ``<video>/`` only when complete, so a
rerun skips finished videos and redoes interrupted ones. A video that fails to decode is reported by
name, the others go on, the index lists the good ones, and the exit status is 1.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg
from tqdm import tqdm

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m datasets.prepare.convert_kth", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from datasets.kth import FRAME_FILE, IMAGE_SIZES, INDEX_FILE, processed_dir
from datasets.prepare.kth_download import KTH_CLASSES, SEQUENCE_FILE
from utils import USER_ERROR, DRNetError

FFMPEG_FRAME_PATTERN = "%05d.png"  # the same names, in ffmpeg's image2 syntax
LAST_TRAIN_PERSON = 16
VIDEO_NAME = re.compile(rf"person(\d\d)_({'|'.join(KTH_CLASSES)})_d(\d)")
VIDEO_FILE = re.compile(rf"({VIDEO_NAME.pattern})_uncomp\.avi")
FRAME_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
# 00sequences.txt also states its own person split (Training:/Validation:/Test: lines); we use 1-16 / 17-25.
SPLIT_LINE = re.compile(r"(Training|Validation|Test)\s*:", re.IGNORECASE)
# Decoding one small video is quick; this only stops a hung ffmpeg from blocking the run forever.
FFMPEG_TIMEOUT_S = 600


def parse_sequence_file(text: str) -> tuple[dict[str, list[tuple[int, int]]], list[str]]:
    """Parse 00sequences.txt into {video: [(first, last), ...]} (1-based, inclusive) and problems found.

    An entry may continue on the following lines (the file has stray line breaks). Split declarations
    and entries marked ``*missing*`` (a video that KTH never shipped) are skipped silently. Lines that
    are neither an entry nor a continuation (headers, typos) and ranges that make no sense are reported
    as problems and ignored; the rest of the file is still used.
    """
    segments: dict[str, list[tuple[int, int]]] = {}
    problems: list[str] = []
    current: str | None = None
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or SPLIT_LINE.match(stripped):
            continue
        name_match = VIDEO_NAME.match(stripped)
        if name_match:
            current = name_match.group(0)
            if current in segments:
                problems.append(f"line {line_number}: second entry for {current} ignored")
                current = None
                continue
            rest = stripped[name_match.end():].replace("frames", "", 1)
            if "*missing*" in rest:
                current = None
                continue
            segments[current] = []
        elif current is not None and FRAME_RANGE.search(stripped):
            rest = stripped
        else:
            problems.append(f"line {line_number}: cannot parse {stripped!r}")
            continue
        ranges = [(int(first), int(last)) for first, last in FRAME_RANGE.findall(rest)]
        valid = [(first, last) for first, last in ranges if 1 <= first <= last]
        leftover = FRAME_RANGE.sub("", rest).replace(",", " ").strip()
        if leftover or len(valid) < len(ranges):
            problems.append(f"line {line_number}: cannot parse all of {stripped!r}, kept {valid}")
        segments[current].extend(valid)
    return segments, problems


def zero_based_segments(ranges: list[tuple[int, int]], num_frames: int) -> tuple[list[list[int]], bool]:
    """Turn 1-based inclusive ranges into 0-based half-open [start, end) within `num_frames`.

    Returns the segments and whether any range had to be clipped or dropped.
    """
    segments = []
    clipped = False
    for first, last in ranges:
        start, end = first - 1, min(last, num_frames)
        clipped |= end < last
        if end > start:
            segments.append([start, end])
    return segments, clipped


def decode_video(ffmpeg: str, video_path: Path, output: Path, image_size: int) -> int:
    """Decode `video_path` into grey PNG frames in `output` (replaced atomically); return the frame count."""
    partial = output.with_name(f".partial-{output.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    command = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        # One thread per ffmpeg: the parallelism is over videos, and these videos are tiny.
        "-threads", "1",
        "-i", str(video_path), "-an",
        "-vf", f"scale={image_size}:{image_size}:flags=area,format=gray",
        # One PNG per decoded frame, so file numbers match the frame numbers of 00sequences.txt.
        "-fps_mode", "passthrough",
        "-start_number", "0", "-f", "image2", str(partial / FFMPEG_FRAME_PATTERN),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    num_frames = count_frames(partial)
    if result.returncode != 0 or num_frames == 0:
        shutil.rmtree(partial, ignore_errors=True)
        lines = result.stderr.strip().splitlines()
        raise DRNetError(lines[-1] if lines else f"ffmpeg exit status {result.returncode}, no frames")
    partial.rename(output)
    return num_frames


def count_frames(video_dir: Path) -> int:
    """Number of consecutive frames 00000.png, 00001.png, ... present in `video_dir`."""
    names = {entry.name for entry in os.scandir(video_dir)}
    count = 0
    while FRAME_FILE.format(count) in names:
        count += 1
    return count


@dataclass
class ConversionReport:
    """What one conversion run did."""

    converted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    index_videos: int = 0


def find_videos(raw: Path) -> dict[str, Path]:
    """Map video name (e.g. person01_boxing_d1) to its AVI for every KTH video under `raw`."""
    videos = {}
    for path in sorted(raw.rglob("*_uncomp.avi")):
        match = VIDEO_FILE.fullmatch(path.name)
        if match:
            videos[match.group(1)] = path
    return videos


def video_entry(name: str, num_frames: int, segments: list[list[int]]) -> dict:
    """The index record of one video."""
    person, action, scenario = VIDEO_NAME.fullmatch(name).groups()
    return {
        "name": name,
        "class": action,
        "person": int(person),
        "scenario": int(scenario),
        "split": "train" if int(person) <= LAST_TRAIN_PERSON else "test",
        "num_frames": num_frames,
        "segments": segments,
    }


def convert_kth(data_root: str | Path, image_size: int, workers: int) -> ConversionReport:
    """Decode every KTH video with a sequence entry into PNG frames and (re)write the index."""
    if image_size not in IMAGE_SIZES:
        raise DRNetError(f"--image_width must be one of {IMAGE_SIZES} for KTH, got {image_size}")
    raw = Path(data_root) / "raw"
    sequence_path = raw / SEQUENCE_FILE
    if not sequence_path.is_file():
        raise DRNetError(f"{sequence_path} not found; run first: sh datasets/prepare/download_kth.sh {data_root}")
    ranges, problems = parse_sequence_file(sequence_path.read_text(errors="replace"))
    report = ConversionReport(warnings=[f"{sequence_path.name} {problem}" for problem in problems])
    videos = find_videos(raw)
    if not videos:
        raise DRNetError(f"no KTH videos under {raw}; run first: sh datasets/prepare/download_kth.sh {data_root}")
    for name in sorted(set(videos) - set(ranges)):
        report.warnings.append(f"{name}: no entry in {SEQUENCE_FILE}, skipped")
    output_root = processed_dir(data_root, image_size)
    output_root.mkdir(parents=True, exist_ok=True)
    todo = []
    for name in sorted(set(videos) & set(ranges)):
        (report.already_done if (output_root / name).is_dir() else todo).append(name)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(decode_video, ffmpeg, videos[name], output_root / name, image_size): name
            for name in todo
        }
        progress = tqdm(as_completed(futures), total=len(futures), desc=f"KTH {image_size}px", unit="video")
        for future in progress:
            name = futures[future]
            try:
                future.result()
                report.converted.append(name)
            except (DRNetError, OSError, subprocess.SubprocessError) as error:
                report.failed[name] = str(error)
    report.converted.sort()
    write_index(output_root, image_size, ranges, report)
    return report


def write_index(
    output_root: Path, image_size: int, ranges: dict[str, list[tuple[int, int]]], report: ConversionReport
) -> None:
    """Write index.json for every finished video that has a sequence entry (only if it changed)."""
    entries = []
    for name in sorted(ranges):
        video_dir = output_root / name
        if not video_dir.is_dir():
            continue
        num_frames = count_frames(video_dir)
        segments, clipped = zero_based_segments(ranges[name], num_frames)
        if clipped:
            report.warnings.append(f"{name}: segments clipped to its {num_frames} frames")
        if not segments:
            report.warnings.append(f"{name}: no usable segment, left out of the index")
            continue
        entries.append(video_entry(name, num_frames, segments))
    report.index_videos = len(entries)
    # One video per line: small, and still easy to read and diff.
    videos = ",\n".join(f"  {json.dumps(entry)}" for entry in entries)
    text = f'{{"image_size": {image_size}, "videos": [\n{videos}\n]}}\n'
    index_path = output_root / INDEX_FILE
    if index_path.exists() and index_path.read_text() == text:
        return
    # Written to a temporary name and renamed, so a reader never sees a half-written index.
    temporary = index_path.with_name(INDEX_FILE + ".tmp")
    temporary.write_text(text)
    temporary.replace(index_path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if any video failed)."""
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare.convert_kth", description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True, help="folder holding raw/ from download_kth.sh")
    parser.add_argument("--image_width", type=int, default=128, help="output frame size S (64 or 128), as main.py's")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel videos")
    args = parser.parse_args(argv)
    try:
        report = convert_kth(args.data_root, args.image_width, max(1, args.workers))
    except DRNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for name, reason in sorted(report.failed.items()):
        print(f"failed: {name}: {reason}", file=sys.stderr)
    print(
        f"converted {len(report.converted)}, already done {len(report.already_done)}, "
        f"failed {len(report.failed)}; index of {report.index_videos} videos in "
        f"{processed_dir(args.data_root, args.image_width) / INDEX_FILE}"
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
