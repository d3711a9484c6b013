"""Benchmark: how long the KTH loader takes to prepare one DRNET training batch from PNG frames on disk.

    python -m tools.data_speed [--batch_size 100] [--batches 10] [--image_size 128] [--step_s 0.168]

Writes a synthetic KTH in the layout of the prepared KTH data (processed/<S>/<video>/<i:05d>.png plus index.json)
to a temporary folder, then times `KTHClips.drnet_batch` in the calling thread and through `BatchStream` (the
training loop's `--data_threads`; the consumer does nothing), each with 1 and more decode threads (the loader's
`decode_threads`, which read a batch's frames side by side), and, with CUDA, `.pin_memory()` on one batch.
Times are medians over batches. Prints Markdown; asserts nothing. The frames are smooth noise (a blurred
background, a dark blob walking across it, faint camera noise), not white noise, which PNG cannot compress.

The PNGs are written by Pillow, not by ffmpeg as the KTH conversion does (the GPU machines lack imageio-ffmpeg).
Pillow picks a filter per row, ffmpeg uses Paeth on every row, which takes longer to undo: the same frames
from ffmpeg decoded 1.4x slower on a shared 2-core EPYC (0.42 against 0.29 ms at 128 px): these times are low.

The loader's frame cache is off by default (--cache_frames 0): the real train split holds far more frames than
its default 8192, so hits are rare in training. The OS page cache is warm either way (the files were just written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.data_speed", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)
from datasets.kth import DECODE_THREADS, FRAME_FILE, INDEX_FILE, KTHClips, processed_dir
from datasets.prefetch import BatchStream
from datasets.prepare.kth_download import KTH_CLASSES
from engine.precision import cpu_model

SEED = 0


def smooth_noise(shape: tuple[int, ...], cells: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise on a coarse `cells` x `cells` grid, upsampled bilinearly to `size` x `size`."""
    coarse = torch.rand(*shape, cells, cells, generator=generator)
    return F.interpolate(coarse.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0]


def fake_video(num_frames: int, size: int, generator: torch.Generator) -> np.ndarray:
    """uint8 (T, S, S): a still textured background, a dark blob crossing it, and faint per-frame noise."""
    background = 80 + 100 * smooth_noise((1,), 6, size, generator) + 30 * smooth_noise((1,), 24, size, generator)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frames = []
    for t in range(num_frames):
        centre = size * (0.2 + 0.6 * t / max(num_frames - 1, 1))  # walks from left to right
        body = ((x - centre) / (0.08 * size)) ** 2 + ((y - 0.55 * size) / (0.25 * size)) ** 2 < 1
        frame = torch.where(body, torch.tensor(45.0), background[0])
        frames.append(frame + 3 * torch.randn(size, size, generator=generator))
    return torch.stack(frames).round().clamp(0, 255).to(torch.uint8).numpy()


def write_fake_kth(data_root: Path, size: int, videos: int, frames: int) -> float:
    """Write a KTH train split as convert_kth.py lays it out; return the mean PNG size in kB."""
    root = processed_dir(data_root, size)
    generator = torch.Generator().manual_seed(SEED)
    entries = []
    for v in range(videos):
        person, action, scenario = v % 16 + 1, KTH_CLASSES[v % len(KTH_CLASSES)], v // 16 % 4 + 1
        name = f"person{person:02d}_{action}_d{scenario}"
        if any(entry["name"] == name for entry in entries):  # past 96 videos the names repeat: keep them unique
            name += f"_{v}"
        (root / name).mkdir(parents=True)
        for index, frame in enumerate(fake_video(frames, size, generator)):  # 8-bit grey PNGs, as convert_kth.py's
            Image.fromarray(frame).save(root / name / FRAME_FILE.format(index))
        half = frames // 2  # two action segments per video, as KTH's sequence file has several
        entries.append({"name": name, "class": action, "person": person, "scenario": scenario, "split": "train",
                        "num_frames": frames, "segments": [[0, half], [half, frames]]})
    (root / INDEX_FILE).write_text(json.dumps({"image_size": size, "videos": entries}))
    return sum(path.stat().st_size for path in root.glob("*/*.png")) / (videos * frames) / 1e3


def time_batches(clips: KTHClips, batch_size: int, batches: int, ahead: int) -> float:
    """Median seconds between batches, `batches` of them drawn through BatchStream with `ahead` prepared ahead."""
    generator = torch.Generator().manual_seed(SEED)
    times = [time.perf_counter()]
    # The consumer does nothing, so it always waits on the loader: each interval is one batch's preparation.
    # The median, because other work on a shared machine can stall any single batch.
    with BatchStream(lambda g: clips.drnet_batch(batch_size, g), generator, ahead) as stream:
        for _ in range(batches):
            next(stream)
            times.append(time.perf_counter())
    return statistics.median(np.diff(times).tolist())


def main() -> None:
    """Build the fake KTH, time the loader in each setting, print the table and the verdict."""
    parser = argparse.ArgumentParser(prog="python -m tools.data_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=10, help="batches timed per setting")
    parser.add_argument("--image_size", type=int, default=128, choices=(64, 128))
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--frames", type=int, default=60, help="frames per video")
    parser.add_argument("--max_step", type=int, default=20, help="window of the four frames (main.py's default)")
    parser.add_argument("--cache_frames", type=int, default=0, help="the loader's frame cache (0: every frame read)")
    parser.add_argument("--decode_threads", type=int, nargs="*", default=[2, 4],
                        help=f"decode thread counts to time with one loader thread, besides 1 and the loader's "
                             f"default {DECODE_THREADS} (min(8, CPUs))")
    parser.add_argument("--step_s", type=float, default=0.168,
                        help="GPU seconds per training step to compare with (H200, fp32, KTH 128 px, batch 100)")
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="drnet-data-speed-") as tmp:
        start = time.perf_counter()
        png_kb = write_fake_kth(Path(tmp), args.image_size, args.videos, args.frames)
        print(f"fake KTH: {args.videos} videos x {args.frames} frames at {args.image_size} px, "
              f"{png_kb:.1f} kB per PNG, written in {time.perf_counter() - start:.0f} s; "
              f"batch {args.batch_size} (4 frames per clip), {args.batches} batches per setting, "
              f"frame cache {args.cache_frames}\n")

        def fresh(decode_threads: int = DECODE_THREADS) -> KTHClips:
            """A new loader, so every setting starts from the same (empty) frame cache."""
            return KTHClips(tmp, "train", args.image_size, 1, args.max_step, cache_frames=args.cache_frames,
                            decode_threads=decode_threads)

        decode_counts = sorted({1, DECODE_THREADS, *args.decode_threads})
        for threads in decode_counts:  # warm-up: first calls (PNG plugin, allocator), the pools' threads
            fresh(threads).drnet_batch(args.batch_size, torch.Generator())
        # (data_threads, decode_threads): data_threads counts batches prepared ahead, all on ONE background
        # thread (prefetch.py), which draws each batch and waits while its frames decode on the decode threads.
        settings = [(0, 1), (0, DECODE_THREADS), *((1, threads) for threads in decode_counts),
                    (2, DECODE_THREADS), (4, DECODE_THREADS)]
        times = {setting: time_batches(fresh(setting[1]), args.batch_size, args.batches, setting[0])
                 for setting in dict.fromkeys(settings)}
        batch = fresh().drnet_batch(args.batch_size, torch.Generator().manual_seed(SEED))
        notes = [f"{batch.numel() * batch.element_size() / 1e6:.1f} MB per batch, {tuple(batch.shape)} "
                 f"{str(batch.dtype).removeprefix('torch.')}", "speed-up: against 1 decode thread, same data_threads"]
        if torch.cuda.is_available():
            batch.pin_memory()  # the first call also starts CUDA: not timed
            start = time.perf_counter()
            for _ in range(3):
                batch.pin_memory()
            notes.append(f"pin_memory() of one batch: {(time.perf_counter() - start) / 3:.3f} s")
        else:
            notes.append("no CUDA here: pin_memory() not timed")

    print("| data_threads | decode_threads | s / batch | batches / s | speed-up |\n|---|---|---|---|---|")
    for (ahead, threads), seconds in times.items():
        serial = times.get((ahead, 1))
        print(f"| {ahead}{' (training loop thread)' if ahead == 0 else ''} | {threads} | {seconds:.3f} | "
              f"{1 / seconds:.1f} | {f'{serial / seconds:.2f}x' if serial else ''} |")
    print("\n" + "; ".join(notes))
    # With data_threads >= 1 the loader works while the GPU steps, so it keeps up if a batch takes no longer.
    loader_s = times[(1, DECODE_THREADS)]
    verdict = "keeps up with" if loader_s <= args.step_s else f"is {loader_s / args.step_s:.1f}x slower than"
    print(f"One loader thread with {DECODE_THREADS} decode threads ({loader_s:.3f} s / batch; "
          f"{times[(1, 1)]:.3f} s with 1) {verdict} a {args.step_s:.3f} s GPU step"
          + ("" if loader_s <= args.step_s else f": the GPU would idle {1 - args.step_s / loader_s:.0%} of the time")
          + f" on this CPU ({cpu_model()}).")


if __name__ == "__main__":
    main()
