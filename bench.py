"""Benchmark: seconds per DRNET training iteration side by side with the authors' step, and roll-out speed.

    python bench.py                     # batch 100, 64 px Moving MNIST, on the default device
    python bench.py --iters 20 --device cuda
    python bench.py --variants ours "ours, bf16"
    python bench.py --dataset kth --device cuda   # KTH's networks at 128 px on random frames

Speed claims hold for one machine only, so every figure comes from this one run, and the table names the CPU
and its bf16 features. "reference" does per iteration what the authors' drnet-py train_drnet.py does (written
here, with our networks): two extra pose passes for the scene discriminator, and graphs built for x_c2 and x_p2
only to be detached. bf16 variants are skipped where `--amp auto` would not use bf16 (no AMX or AVX-512 bf16:
emulated bf16 is several times slower than fp32), unless named with --variants. Each variant runs in a fresh
subprocess so that its peak memory is its own. Prints Markdown tables.
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
import torch.nn.functional as F

from models import DRNet

VARIANTS = {  # name: (the authors' step, bf16 autocast, channels_last, skips, cudnn.benchmark)
    "reference": (True, False, False, False, False),
    "ours": (False, False, False, False, False),
    "ours, channels_last": (False, False, True, False, False),
    "ours, bf16": (False, True, False, False, False),
    "ours, bf16 + channels_last": (False, True, True, False, False),
    "ours + skips": (False, False, False, True, False),
    "ours, cudnn.benchmark": (False, False, False, False, True),
}
GPU_ONLY = ("ours, cudnn.benchmark",)  # left out of the default list on a CPU, where they change nothing
ROLLOUT_CLIPS, ROLLOUT_FRAMES = 4, 200


def reference_step(model: DRNet, optimizers: dict, frames: torch.Tensor, alpha: float, beta: float) -> None:
    """One iteration with the passes of drnet-py's train_drnet.py: its discriminator update, then its main step."""
    from train_drnet import adversarial_loss, drnet_loss, similarity_loss

    x_c1, x_c2, x_p1, x_p2 = frames
    half = x_c1.shape[0] // 2
    # train_scene_discriminator(x): two frames encoded again, with graphs, then detached.
    h_1, h_2 = model.encode_pose(x_c1).detach(), model.encode_pose(x_c2).detach()
    h_2 = torch.cat([h_2[:half][torch.randperm(half)], h_2[half:]])
    labels = torch.cat([torch.zeros(half), torch.ones(len(h_1) - half)]).to(h_1.device)
    disc_loss = F.binary_cross_entropy_with_logits(model.scene_discriminator(h_1, h_2), labels)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    disc_loss.backward()
    optimizers["discriminator"].step()
    # train(x): all four frames encoded with graphs; x_c2 and x_p2 are detached afterwards.
    content = model.encode_content(x_c1)
    h_c2 = model.encode_content(x_c2).h.detach()
    h_p1, h_p2 = model.encode_pose(x_p1), model.encode_pose(x_p2).detach()
    rec = F.mse_loss(model.decode(content, h_p1), x_p1)
    adv = adversarial_loss(model.scene_discriminator(h_p1, h_p2))
    loss = drnet_loss(rec, similarity_loss(content.h, h_c2), adv, alpha, beta)
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["main"].step()


def measure(variant: str, batch_size: int, iters: int, warmup: int, device_name: str, dataset: str = "mnist"
            ) -> dict:
    """Time `iters` training iterations (after `warmup`) of one variant of a dataset's default networks.

    Moving MNIST batches are rendered as in training (on the GPU there); KTH-shaped batches are random frames
    of its size, since only their shape matters for the time.
    """
    from datasets.moving_mnist import moving_mnist
    from datasets.registry import DATASETS
    from train_drnet import make_optimizers, train_step
    from utils import resolve_device

    authors, bf16, channels_last, skips, cudnn_benchmark = VARIANTS[variant]
    device = resolve_device(device_name)
    torch.backends.cudnn.benchmark = cudnn_benchmark  # cuDNN times its algorithms per shape, picks the fastest
    config = {**DATASETS[dataset], "lr": 0.002, "beta1": 0.5}
    config["use_skip"] = config["use_skip"] or skips
    size, channels = config["image_width"], config["channels"]
    torch.manual_seed(0)
    model = DRNet(config).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = make_optimizers(model, config)
    generator = torch.Generator().manual_seed(0)
    if dataset == "mnist":
        data = moving_mnist("data", "train", size, channels, 20, download=False).render_on(device)
        draw = data.drnet_batch
    else:
        def draw(batch: int, generator: torch.Generator) -> torch.Tensor:
            return torch.rand(4, batch, channels, size, size, generator=generator)
    data_times, step_times = [], []
    for i in range(warmup + iters):
        began = time.perf_counter()
        frames = draw(batch_size, generator).to(device)
        if channels_last:
            frames = torch.stack([f.contiguous(memory_format=torch.channels_last) for f in frames])
        loaded = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if authors:
                reference_step(model, optimizers, frames, config["alpha"], config["beta"])
            else:
                train_step(model, optimizers, frames, config["alpha"], config["beta"], generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            data_times.append(loaded - began)
            step_times.append(time.perf_counter() - loaded)
    total = [d + s for d, s in zip(data_times, step_times, strict=True)]
    return {"variant": variant, "device": str(device), "threads": torch.get_num_threads(), "size": size,
            "s_per_iter": statistics.median(total), "data_s": statistics.median(data_times),
            "peak_mib": peak_memory_mib(device)}


def measure_rollout(device_name: str) -> dict:
    """Seconds to predict ROLLOUT_FRAMES frames of ROLLOUT_CLIPS clips, decoded one step per call and in one pass."""
    import predictor
    from datasets.registry import DATASETS
    from utils import resolve_device

    device = resolve_device(device_name)
    config = {**DATASETS["mnist"], "use_skip": False}
    lstm_config = {"rnn_size": 256, "rnn_layers": 2}
    torch.manual_seed(0)
    model = predictor.DRNetPredictor(config, lstm_config).to(device).eval()
    past = torch.rand(ROLLOUT_CLIPS, 10, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    seconds = {}
    for name, chunk in (("one step per call", ROLLOUT_CLIPS), ("one pass", predictor.DECODE_CHUNK)):
        predictor.DECODE_CHUNK = chunk  # ROLLOUT_CLIPS frames per decoder call is the cost of one call per step
        with torch.no_grad():
            began = time.perf_counter()
            model.predict(past, ROLLOUT_FRAMES)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] = time.perf_counter() - began
    return seconds


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def in_subprocess(*flags: str) -> dict:
    """Run this script with `flags` in a fresh process and return the JSON line it prints."""
    done = subprocess.run([sys.executable, __file__, *flags], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    """Run each variant in its own process and print the tables."""
    from precision import NATIVE_BF16_FLAGS, cpu_flags, cpu_model, resolve_precision
    from utils import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", choices=["mnist", "kth"], default="mnist", help="whose default networks "
                                                                                      "and frame size")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="variants to run (default: all that "
                                                                              "apply on this machine)")
    parser.add_argument("--one", choices=[*VARIANTS, "rollout"], help=argparse.SUPPRESS)  # used by the subprocesses
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_rollout(args.device) if args.one == "rollout"
                         else measure(args.one, args.batch_size, args.iters, args.warmup, args.device,
                                      args.dataset)))
        return
    device = resolve_device(args.device)
    bf16 = resolve_precision("auto", device)
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags()) or ["no native bf16"]
    print(f"CPU: {cpu_model()} ({', '.join(native)}); torch {torch.__version__}; {torch.get_num_threads()} threads\n")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}\n")
    print("| variant | device (threads) | s / iteration | clips / s | x reference | of which data "
          "| peak memory (MiB) |\n|---|---|---|---|---|---|---|")
    reference = None
    for variant in args.variants or list(VARIANTS):
        if not args.variants and variant in GPU_ONLY and device.type != "cuda":
            continue
        if VARIANTS[variant][1] and not args.variants and bf16.dtype is None:
            print(f"| {variant} | skipped: {bf16.reason} | | | | |")
            continue
        row = in_subprocess("--one", variant, "--batch_size", str(args.batch_size), "--iters", str(args.iters),
                            "--warmup", str(args.warmup), "--device", args.device, "--dataset", args.dataset)
        reference = row["s_per_iter"] if variant == "reference" else reference
        ratio = f"{row['s_per_iter'] / reference:.2f}" if reference else "-"
        memory = "GPU " if row["device"].startswith("cuda") else "RSS "
        print(f"| {variant}, {args.dataset}, batch {args.batch_size}, {row['size']} px | {row['device']} "
              f"({row['threads']}) | {row['s_per_iter']:.3f} | {args.batch_size / row['s_per_iter']:.0f} | {ratio} | "
              f"{row['data_s']:.3f} | {memory}{row['peak_mib']:.0f} |")
    rollout = in_subprocess("--one", "rollout", "--device", args.device)
    print(f"\n| roll-out of {ROLLOUT_CLIPS} clips x {ROLLOUT_FRAMES} frames (mnist networks) | seconds |\n|---|---|")
    for name, seconds in rollout.items():
        print(f"| decoded {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
