"""Benchmark: seconds per DRNET training iteration and peak memory, without and with skip connections.

    python bench.py                     # batch 100, 64 px Moving MNIST, on the default device
    python bench.py --iters 20 --device cuda

Each setting runs in a fresh subprocess so that its peak memory is its own. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def measure(use_skip: bool, batch_size: int, iters: int, warmup: int, device_name: str) -> dict:
    """Time `iters` training iterations (after `warmup`) of the mnist defaults; return the figures."""
    from datasets.moving_mnist import moving_mnist
    from datasets.registry import DATASETS
    from models import DRNet
    from train_drnet import make_optimizers, train_step
    from utils import resolve_device

    device = resolve_device(device_name)
    config = {**DATASETS["mnist"], "use_skip": use_skip, "lr": 0.002, "beta1": 0.5}
    torch.manual_seed(0)
    model = DRNet(config).to(device).train()
    optimizers = make_optimizers(model, config)
    data = moving_mnist("data", "train", 64, 3, 20, download=False)
    generator = torch.Generator().manual_seed(0)
    data_times, step_times = [], []
    for i in range(warmup + iters):
        began = time.perf_counter()
        frames = data.drnet_batch(batch_size, generator).to(device)
        loaded = time.perf_counter()
        train_step(model, optimizers, frames, config["alpha"], config["beta"], generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            data_times.append(loaded - began)
            step_times.append(time.perf_counter() - loaded)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    total = [d + s for d, s in zip(data_times, step_times, strict=True)]
    return {"skips": use_skip, "device": str(device), "threads": torch.get_num_threads(),
            "s_per_iter": statistics.median(total), "data_s": statistics.median(data_times),
            "step_s": statistics.median(step_times), "peak_mib": peak_mib}


def main() -> None:
    """Run each setting in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", choices=["plain", "skip"], help=argparse.SUPPRESS)  # used by the subprocesses
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "skip", args.batch_size, args.iters, args.warmup, args.device)))
        return
    print("| model | device (threads) | s / iteration | of which data | peak memory (MiB) |\n|---|---|---|---|---|")
    for one in ("plain", "skip"):
        command = [sys.executable, __file__, "--one", one, "--batch_size", str(args.batch_size), "--iters",
                   str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        name = "DRNET + skips" if row["skips"] else "DRNET"
        memory = "GPU " if row["device"].startswith("cuda") else "RSS "
        print(f"| {name}, batch {args.batch_size}, 64 px | {row['device']} ({row['threads']}) | "
              f"{row['s_per_iter']:.3f} | {row['data_s']:.3f} | {memory}{row['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
