"""Benchmark: seconds per DRNET training iteration side by side with the authors' step, and roll-out speed.

    python -m tools.speed                     # batch 100, 64 px Moving MNIST, on the default device
    python -m tools.speed --iters 20 --device cuda
    python -m tools.speed --variants ours "ours, bf16"
    python -m tools.speed --dataset kth --device cuda   # KTH's networks at 128 px on random frames

Speed claims hold for one machine only, so every figure comes from this one run, and the table names the CPU
and its bf16 features. "reference" does per iteration what the authors' drnet-py train_drnet.py does (written
here, with our networks): two extra pose passes for the scene discriminator, graphs built for x_c2 and x_p2
only to be detached, PyTorch's default Adam (one update per tensor on a CPU) and its losses read every
iteration. "ours" is main.py's step in fp32 (on a CPU with AMX, `--amp auto` runs "ours, bf16 +
channels_last"); each other variant changes one or two things. A variant's time is the mean
over its timed iterations, measured from an idle device to an idle device (a GPU may run ahead in between).
bf16 variants are skipped where `--amp auto` would not use bf16 (no AMX or AVX-512 bf16: emulated bf16 is
several times slower than fp32), and "ours, compile" runs only when named with --variants. "captured" is
`--cuda_graph True`: the whole step recorded once as a CUDA graph and replayed (CUDA only; elsewhere its rows
say why they were skipped). Each variant runs in a fresh subprocess so that its peak memory is its own. Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.speed", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from models import DRNet

# What main.py does by default; each variant changes some of it.
OURS = {"authors": False, "bf16": False, "channels_last": False, "skips": False, "cudnn_benchmark": False,
        "read_every": 10, "fused_adam": True, "compile": False, "pinned": False, "captured": False}
VARIANTS = {
    # The authors' passes, their per-tensor Adam, their loss read (`.data[0]`) every iteration.
    "reference": {"authors": True, "read_every": 1, "fused_adam": False},
    "ours": {},
    "ours, losses read every iteration": {"read_every": 1},
    "ours, PyTorch's default Adam": {"fused_adam": False},
    "ours, channels_last": {"channels_last": True},
    "ours, bf16": {"bf16": True},
    "ours, bf16 + channels_last": {"bf16": True, "channels_last": True},
    "ours + skips": {"skips": True},
    "ours, compile": {"compile": True},
    "ours, cudnn.benchmark": {"cudnn_benchmark": True},
    "ours, pinned batches": {"pinned": True},
    "captured": {"captured": True},
    "captured bf16": {"captured": True, "bf16": True},
}
GPU_ONLY = ("ours, losses read every iteration", "ours, cudnn.benchmark", "ours, pinned batches")  # CPU: no change
NAMED_ONLY = ("ours, compile",)  # run only when named: compiling takes minutes on a CPU
ROLLOUT_CLIPS, ROLLOUT_FRAMES = 4, 200


def reference_step(model: DRNet, optimizers: dict, frames: torch.Tensor, alpha: float, beta: float
                   ) -> dict[str, torch.Tensor]:
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
    sim = similarity_loss(content.h, h_c2)
    loss = drnet_loss(rec, sim, adv, alpha, beta)
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["main"].step()
    return {"rec": rec.detach(), "sim": sim.detach(), "adv": adv.detach(), "disc_loss": disc_loss.detach()}


def measure(variant: str, batch_size: int, iters: int, warmup: int, device_name: str, dataset: str = "mnist"
            ) -> dict:
    """Time `iters` training iterations (after `warmup`) of one variant of a dataset's default networks.

    Moving MNIST batches are rendered as in training (on the GPU there); KTH-shaped batches are random frames
    of its size, since only their shape matters for the time.
    """
    from datasets.moving_mnist import moving_mnist
    from datasets.registry import DATASETS
    from engine.loop import read_losses
    from engine.precision import FP32, Precision, compile_networks, set_capturable, to_channels_last
    from train_drnet import captured_step, make_optimizers, train_step
    from utils import resolve_device

    options = {**OURS, **VARIANTS[variant]}
    device = resolve_device(device_name)
    torch.backends.cudnn.benchmark = options["cudnn_benchmark"]  # cuDNN times its algorithms per shape
    config = {**DATASETS[dataset], "lr": 0.002, "beta1": 0.5}
    config["use_skip"] = config["use_skip"] or options["skips"]
    size, channels = config["image_width"], config["channels"]
    torch.manual_seed(0)
    model = DRNet(config).to(device).train()
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if options["fused_adam"]:
        optimizers = make_optimizers(model, config)
    else:
        optimizers = {name: torch.optim.Adam(optimizer.param_groups[0]["params"], lr=0.002, betas=(0.5, 0.999))
                      for name, optimizer in make_optimizers(model, config).items()}
    if options["compile"]:
        compile_networks(model)
    generator = torch.Generator().manual_seed(0)
    if dataset == "mnist":
        data = moving_mnist("data", "train", size, channels, 20, download=False).render_on(device)
        draw = data.drnet_batch
    else:
        def draw(batch: int, generator: torch.Generator) -> torch.Tensor:
            return torch.rand(4, batch, channels, size, size, generator=generator)
    if options["captured"]:  # recorded here, before the warm-up: what main.py does before its first iteration
        for optimizer in optimizers.values():
            set_capturable(optimizer, True)
        graphed = captured_step(model, optimizers, {**config, "seed": 0}, SimpleNamespace(drnet_batch=draw), batch_size,
                                Precision(torch.bfloat16, "bench") if options["bf16"] else FP32, device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    data_s, pending = 0.0, []
    for i in range(warmup + iters):
        if i == warmup:  # the timed iterations start on an idle device
            synchronize()
            began, data_s = time.perf_counter(), 0.0
        drawn = time.perf_counter()
        frames = draw(batch_size, generator)
        if options["pinned"]:
            frames = frames.pin_memory()  # on a loader thread in training (datasets/prefetch.py)
        frames = frames.to(device, non_blocking=True)
        if options["channels_last"]:
            frames = to_channels_last(frames)
        data_s += time.perf_counter() - drawn
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options["bf16"]):
            if options["captured"]:
                pending.append(graphed(frames))
            elif options["authors"]:
                pending.append(reference_step(model, optimizers, frames, config["alpha"], config["beta"]))
            else:
                pending.append(train_step(model, optimizers, frames, config["alpha"], config["beta"], generator))
        if len(pending) >= options["read_every"]:  # as engine.loop.run_iterations reads them: one transfer
            read_losses(list(enumerate(pending)))
            pending = []
    synchronize()
    return {"variant": variant, "device": str(device), "threads": torch.get_num_threads(), "size": size,
            "s_per_iter": (time.perf_counter() - began) / iters, "data_s": data_s / iters,
            "peak_mib": peak_memory_mib(device)}


def measure_rollout(device_name: str) -> dict:
    """Seconds to predict ROLLOUT_FRAMES frames of ROLLOUT_CLIPS clips, decoded one step per call and in one pass."""
    import models
    from datasets.registry import DATASETS
    from utils import resolve_device

    device = resolve_device(device_name)
    config = {**DATASETS["mnist"], "use_skip": False}
    lstm_config = {"rnn_size": 256, "rnn_layers": 2}
    torch.manual_seed(0)
    model = models.DRNetPredictor(config, lstm_config).to(device).eval()
    past = torch.rand(ROLLOUT_CLIPS, 10, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    seconds = {}
    for name, chunk in (("one step per call", ROLLOUT_CLIPS), ("one pass", models.DECODE_CHUNK)):
        models.DECODE_CHUNK = chunk  # ROLLOUT_CLIPS frames per decoder call is the cost of one call per step
        with torch.no_grad():
            began = time.perf_counter()
            model.predict(past, ROLLOUT_FRAMES)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] = time.perf_counter() - began
    return seconds


def measure_lstm(device_name: str, batch_size: int, iters: int) -> dict:
    """Seconds per clip of one pose-LSTM update on 20-frame Moving MNIST clips: encoding every batch through the
    frozen DRNET (fp32, and bf16 where `--amp auto` takes it) against drawing the batch from the code pool (the
    LSTM in fp32, and in bf16 where `--amp auto` takes it)."""
    from datasets.registry import DATASETS
    from engine.precision import FP32, adam, autocast, resolve_precision
    from models import DRNetPredictor
    from train_lstm import CodePool, encode_clips, freeze_drnet, lstm_update
    from utils import resolve_device

    device = resolve_device(device_name)
    config = {**DATASETS["mnist"], "use_skip": False, "channels": 1}
    torch.manual_seed(0)
    model = DRNetPredictor(config, {"rnn_size": 256, "rnn_layers": 2}).to(device)
    freeze_drnet(model)
    optimizer = adam(model.lstm.parameters(), 2e-4, 0.9)
    clips = torch.rand(batch_size, 20, 1, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    pool = CodePool(1, batch_size)
    pool.add(*encode_clips(model, clips, 10))
    indices = torch.arange(batch_size)
    precisions = {"fp32": FP32, "bf16": resolve_precision("auto", device)}

    def encoded(precision):
        def update():
            with autocast(precision, device):
                content, poses = encode_clips(model, clips, 10)
            lstm_update(model.lstm, optimizer, content, poses)
        return update

    updates = {f"encode every batch ({name} encoders)": encoded(precision)
               for name, precision in precisions.items() if name == "fp32" or precision.dtype is not None}
    updates["from the code pool"] = lambda: lstm_update(model.lstm, optimizer, *pool.batch(indices))
    if precisions["bf16"].dtype is not None:
        updates["from the code pool, LSTM in bf16 (--amp_lstm True)"] = lambda: lstm_update(
            model.lstm, optimizer, *pool.batch(indices), precision=precisions["bf16"])
    seconds = {}
    for name, update in updates.items():
        update()  # warm-up
        began = time.perf_counter()
        for _ in range(iters):
            update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = (time.perf_counter() - began) / iters / batch_size
    return seconds


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def in_subprocess(*flags: str) -> dict:
    """Run this script with `flags` in a fresh process and return the JSON line it prints, or {"error": why}."""
    done = subprocess.run([sys.executable, "-m", "tools.speed", *flags], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:  # one variant that cannot run here (torch.compile without a compiler) ends its row
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    """Run each variant in its own process and print the tables."""
    from engine.precision import NATIVE_BF16_FLAGS, cpu_flags, cpu_model, resolve_precision
    from utils import resolve_device

    parser = argparse.ArgumentParser(prog="python -m tools.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", choices=["mnist", "kth"], default="mnist", help="whose default networks "
                                                                                      "and frame size")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="variants to run (default: all that "
                                                                              "apply on this machine)")
    parser.add_argument("--no_rollout", action="store_true", help="skip the roll-out table")
    parser.add_argument("--no_lstm", action="store_true", help="skip the pose-LSTM table")
    parser.add_argument("--one", choices=[*VARIANTS, "rollout", "lstm"], help=argparse.SUPPRESS)  # subprocesses
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_rollout(args.device) if args.one == "rollout"
                         else measure_lstm(args.device, args.batch_size, args.iters) if args.one == "lstm"
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
        if not args.variants and (variant in NAMED_ONLY or (variant in GPU_ONLY and device.type != "cuda")):
            continue
        if VARIANTS[variant].get("captured") and device.type != "cuda":
            print(f"| {variant} | skipped: graph capture needs a CUDA GPU, this run is on {device} | | | | | |")
            continue
        if VARIANTS[variant].get("bf16") and not args.variants and bf16.dtype is None:
            print(f"| {variant} | skipped: {bf16.reason} | | | | | |")
            continue
        row = in_subprocess("--one", variant, "--batch_size", str(args.batch_size), "--iters", str(args.iters),
                            "--warmup", str(args.warmup), "--device", args.device, "--dataset", args.dataset)
        if "error" in row:
            print(f"| {variant} | failed: {row['error']} | | | | | |")
            continue
        reference = row["s_per_iter"] if variant == "reference" else reference
        ratio = f"{row['s_per_iter'] / reference:.2f}" if reference else "-"
        memory = "GPU " if row["device"].startswith("cuda") else "RSS "
        print(f"| {variant}, {args.dataset}, batch {args.batch_size}, {row['size']} px | {row['device']} "
              f"({row['threads']}) | {row['s_per_iter']:.4f} | {args.batch_size / row['s_per_iter']:.0f} | {ratio} | "
              f"{row['data_s']:.3f} | {memory}{row['peak_mib']:.0f} |")
    if not args.no_rollout:
        rollout = measured("roll-out", "rollout", "--device", args.device)
        print(f"\n| roll-out of {ROLLOUT_CLIPS} clips x {ROLLOUT_FRAMES} frames (mnist networks) | seconds |\n"
              "|---|---|")
        for name, seconds in rollout.items():
            print(f"| decoded {name} | {seconds:.2f} |")
    if not args.no_lstm:
        lstm = measured("pose-LSTM", "lstm", "--device", args.device, "--batch_size", str(args.batch_size),
                        "--iters", str(args.iters))
        print(f"\n| pose-LSTM update, batch {args.batch_size} of 20-frame clips (mnist networks) | ms / clip | x pool "
              "|\n|---|---|---|")
        for name, seconds in lstm.items():
            print(f"| {name} | {1000 * seconds:.2f} | {seconds / lstm['from the code pool']:.1f} |")


def measured(what: str, one: str, *flags: str) -> dict:
    """The figures of `--one ONE` measured in a fresh process; exit with one line if it failed."""
    figures = in_subprocess("--one", one, *flags)
    if "error" in figures:
        sys.exit(f"{what} measurement failed: {figures['error']}")
    return figures

if __name__ == "__main__":
    main()
