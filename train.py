"""DRNET training (SPEC §1-§2): a scene-discriminator step, then the main step, per iteration.

Run through `main.py`; this module holds the losses, the two steps, the periodic pictures and test
metrics, and the checkpoint/resume logic of a run directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets import ClipDataset
from datasets.moving_mnist import MovingMNIST
from datasets.prefetch import BatchStream
from metrics import mse
from models import Content, DRNet, architecture_keys, architecture_value, discriminator_pairs
from transfer import SwapSet, content_transfer, digit_channels, expand, invariance_ratio, swap_set
from utils import (
    DRNetError,
    LossWatch,
    MetricsLog,
    StopOnInterrupt,
    copy_checkpoint,
    load_checkpoint,
    load_optimizer,
    non_finite_tensors,
    plot_curves,
    rng_state,
    save_checkpoint,
    save_image_grid,
    set_rng_state,
)

log = logging.getLogger("drnet")

METRICS = ["rec", "sim", "adv", "disc_loss", "disc_acc"]
TEST_CLIPS = 64  # fixed test clips for the periodic test MSE and pictures
TEST_METRICS = ["test_content_transfer", "test_rec_mse", "test_content_ratio", "test_content_spread"]
SWAP_CLIPS = 200  # fixed Moving MNIST test swaps for the periodic content transfer


def similarity_loss(h_c1: torch.Tensor, h_c2: torch.Tensor) -> torch.Tensor:
    """L_sim: mean squared distance between the content of two frames; the second one is a fixed target."""
    return F.mse_loss(h_c1, h_c2.detach())


def adversarial_loss(logits: torch.Tensor) -> torch.Tensor:
    """L_adv: cross-entropy against 1/2, so the best the pose encoder can do is leave C undecided."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 0.5))


def drnet_loss(rec: torch.Tensor, sim: torch.Tensor, adv: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The paper's objective L = L_rec + alpha * L_sim + beta * L_adv (the seed put alpha on L_rec)."""
    return rec + alpha * sim + beta * adv


def discriminator_step(model: DRNet, optimizer: torch.optim.Optimizer, h_p1: torch.Tensor,
                       h_p2: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """Update the scene discriminator on detached pose vectors; return its loss and accuracy."""
    first, second, labels = discriminator_pairs(h_p1.detach(), h_p2.detach(), generator)
    logits = model.scene_discriminator(first, second)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    accuracy = ((logits > 0).float() == labels).float().mean()
    return loss.item(), accuracy.item()


def train_step(model: DRNet, optimizers: dict, frames: torch.Tensor, alpha: float, beta: float,
               generator: torch.Generator) -> dict[str, float]:
    """One DRNET iteration on frames (4, B, C, H, W) = x_c1, x_c2, x_p1, x_p2; returns the metrics."""
    x_c1, x_c2, x_p1, x_p2 = frames
    content = model.encode_content(x_c1)
    h_p1 = model.encode_pose(x_p1)
    with torch.no_grad():  # both are only ever used as fixed targets or detached inputs
        h_c2 = model.encode_content(x_c2).h
        h_p2 = model.encode_pose(x_p2)
    # The discriminator learns first on this batch's pose vectors, then the main step faces it (SPEC §2).
    disc_loss, disc_acc = discriminator_step(model, optimizers["discriminator"], h_p1, h_p2, generator)

    rec = F.mse_loss(model.decode(content, h_p1), x_p1)
    sim = similarity_loss(content.h, h_c2)
    model.scene_discriminator.requires_grad_(False)  # frozen in the main step: no gradient reaches it
    adv = adversarial_loss(model.scene_discriminator(h_p1, h_p2))
    model.scene_discriminator.requires_grad_(True)
    loss = drnet_loss(rec, sim, adv, alpha, beta)
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["main"].step()
    return {"rec": rec.item(), "sim": sim.item(), "adv": adv.item(), "disc_loss": disc_loss,
            "disc_acc": disc_acc}


def make_optimizers(model: DRNet, config: dict) -> dict[str, torch.optim.Optimizer]:
    """Adam for the encoders and decoder, and a separate Adam for the scene discriminator."""
    betas = (config["beta1"], 0.999)
    main_params = [*model.content_encoder.parameters(), *model.pose_encoder.parameters(),
                   *model.decoder.parameters()]
    return {"main": torch.optim.Adam(main_params, lr=config["lr"], betas=betas),
            "discriminator": torch.optim.Adam(model.scene_discriminator.parameters(), lr=config["lr"], betas=betas)}


@torch.no_grad()
def report_test_clips(model: DRNet, test_frames: torch.Tensor, test_clips: torch.Tensor, out_dir: Path,
                      iteration: int, swaps: SwapSet | None = None, channels: slice = slice(None)
                      ) -> dict[str, float]:
    """Save a reconstruction grid and an analogy grid of the fixed test clips; return the test metrics.

    `test_content_ratio` is the within-clip share of the content vector's variance (scale-free; near 0:
    content constant over time, different between clips); `test_content_spread` its raw standard
    deviation across clips. With `swaps` (Moving MNIST), `test_content_transfer` tells whether the decoder
    uses the content at all (0: it draws from the pose alone; see transfer.py).
    """
    model.eval()
    x_c1, x_c2, x_p, _ = test_frames
    chunks = range(0, len(x_c1), 32)
    contents = [model.encode_content(x_c1[i:i + 32]) for i in chunks]
    reconstruction = torch.cat([model.decode(content, model.encode_pose(x_p[i:i + 32]))
                                for content, i in zip(contents, chunks, strict=True)])
    h_c1 = torch.cat([content.h for content in contents])
    h_c2 = torch.cat([model.encode_content(x_c2[i:i + 32]).h for i in chunks])
    values = {"test_rec_mse": mse(reconstruction[:, channels], x_p[:, channels]).mean().item(),
              "test_content_spread": h_c1.std(0).mean().item(),
              "test_content_ratio": invariance_ratio(h_c1, h_c2)}
    if swaps is not None:
        values["test_content_transfer"] = content_transfer(model, swaps, channels, x_c1.device)["content_transfer"]
    shown = 8  # rows of the grid: content frame | pose frame | content rendered in that pose
    triplets = torch.stack([x_c1[:shown], x_p[:shown], reconstruction[:shown]], dim=1).flatten(0, 1)
    save_image_grid(triplets, out_dir / f"reconstruction_{iteration:07d}.png", columns=3)
    save_analogy_grid(model, test_clips, out_dir / f"analogy_{iteration:07d}.png")
    model.train()
    return values


@torch.no_grad()
def save_analogy_grid(model: DRNet, clips: torch.Tensor, path: Path) -> None:
    """Save the analogy grid of clips (N, T, C, S, S): row i is clip i's frame 0 rendered in each pose of clip 0."""
    pose_clip, content_frames = clips[0], clips[1:, 0]
    content = model.encode_content(content_frames)
    pose = model.encode_pose(pose_clip)
    cells = [model.decode(expand(Content(content.h[i:i + 1], [s[i:i + 1] for s in content.skips]), len(pose)), pose)
             for i in range(len(content_frames))]
    blank = torch.ones_like(pose_clip[:1])
    grid = [torch.cat([blank, pose_clip])] + [torch.cat([content_frames[i:i + 1], row]) for i, row in enumerate(cells)]
    save_image_grid(torch.cat(grid), path, columns=len(pose_clip) + 1)


def checkpoint_path(run_dir: Path, iteration: int | None = None) -> Path:
    """The latest checkpoint of a run directory, or the periodic one of `iteration`."""
    if iteration is None:
        return run_dir / "checkpoint.pt"
    return run_dir / "checkpoints" / f"iter_{iteration:07d}.pt"


def check_architecture(checkpoint: dict, config: dict, path: Path, keys: tuple[str, ...] | None = None) -> None:
    """Refuse a checkpoint from another dataset, or whose networks differ in `keys` (default: all of them)."""
    keys = architecture_keys() if keys is None else keys
    stored = checkpoint["config"]
    mismatched = [f"{k}={architecture_value(stored, k)!r} (asked: {architecture_value(config, k)!r})" for k in keys
                  if architecture_value(stored, k) != architecture_value(config, k)]
    if checkpoint["config"].get("dataset") != config["dataset"]:
        mismatched.insert(0, f"dataset={checkpoint['config'].get('dataset')!r} (asked: {config['dataset']!r})")
    if mismatched:
        raise DRNetError(f"{path} holds a different architecture: {', '.join(mismatched)}")


def save_run_state(run_dir: Path, model: DRNet, optimizers: dict, config: dict, iteration: int,
                   data_state: torch.Tensor, keep: int) -> None:
    """Write the DRNET checkpoint of `iteration`, whose next batch `data_state` draws (see `write_checkpoints`)."""
    state = {"kind": "drnet", "config": config, "iteration": iteration, "model": model.state_dict(),
             "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
             "rng": rng_state(data_state)}
    write_checkpoints(run_dir, state, iteration, keep)


def write_checkpoints(run_dir: Path, state: dict, iteration: int, keep: int) -> None:
    """Write the latest checkpoint atomically, keep a periodic copy, drop the oldest beyond `keep`.

    A state holding NaN or infinity (a diverged run) is refused with a DRNetError, so the last good
    checkpoint stays the latest one.
    """
    bad = non_finite_tensors(state)
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise DRNetError(f"the weights or optimizer state became non-finite ({bad[0]}{more}) and were not saved; "
                         f"{kept_checkpoint(run_dir)}; try a lower --lr")
    save_checkpoint(state, checkpoint_path(run_dir))
    periodic = copy_to_periodic(run_dir, iteration)
    if keep > 0:
        for old in sorted(periodic.parent.glob("iter_*.pt"))[:-keep]:
            old.unlink()


def kept_checkpoint(run_dir: Path) -> str:
    """What a run stopped by an error leaves as its latest checkpoint, for the error's message."""
    latest = checkpoint_path(run_dir)
    return f"the last good checkpoint {latest} is kept" if latest.exists() else "no checkpoint was written"


def copy_to_periodic(run_dir: Path, iteration: int) -> Path:
    """Copy the latest checkpoint to the periodic one of `iteration`, as atomically as it was written."""
    periodic = checkpoint_path(run_dir, iteration)
    copy_checkpoint(checkpoint_path(run_dir), periodic)
    return periodic


def restore_periodic(run_dir: Path, resumed_from: Path, iteration: int) -> None:
    """Resuming from the latest checkpoint, write its periodic copy again if a run was killed while copying it."""
    if resumed_from == checkpoint_path(run_dir) and not checkpoint_path(run_dir, iteration).exists():
        log.info("restored the missing periodic copy %s", copy_to_periodic(run_dir, iteration))


def run_iterations(config: dict, start: int, stage: str, batches: BatchStream,
                   step: Callable[[torch.Tensor], dict[str, float]], metrics: MetricsLog,
                   save: Callable[[int, torch.Tensor], None], resume_flags: str) -> None:
    """The loop both stages share: progress bar with ETA, a metrics row per iteration, periodic saves, and
    a clean stop on Ctrl-C that saves the last whole iteration. `save` gets the data state after a batch.

    Non-finite losses, and a save that fails (non-finite weights, a full disk), stop the run with a
    one-line DRNetError before a checkpoint of that iteration is written; exploding losses are logged.
    """
    progress = tqdm(range(start + 1, config["max_iter"] + 1), initial=start, total=config["max_iter"],
                    desc=stage, dynamic_ncols=True, disable=config.get("quiet", False))
    began, done, watch = time.perf_counter(), 0, LossWatch()
    with StopOnInterrupt() as interrupt, progress, batches:
        for iteration in progress:
            batch, data_state = next(batches)
            values = step(batch)
            if not all(math.isfinite(v) for v in values.values()):
                raise DRNetError(f"{stage} stopped at iteration {iteration}: the loss is not finite ("
                                 f"{', '.join(f'{name} {value:.4g}' for name, value in values.items())}); "
                                 f"{kept_checkpoint(Path(config['run_dir']))}; try a lower --lr")
            for warning in watch.check(iteration, values):
                log.warning(warning)
            metrics.append(iteration, values)
            done += 1
            progress.set_postfix({name: f"{value:.4g}" for name, value in values.items()}, refresh=False)
            if iteration % config["save_iters"] == 0 or iteration == config["max_iter"] or interrupt.requested:
                try:
                    save(iteration, data_state)
                except DRNetError as error:  # the error says what was kept; add where the run stopped
                    raise DRNetError(f"{stage} stopped at iteration {iteration}: {error}") from error
            if interrupt.requested:
                log.info("stopped at iteration %d; continue with %s", iteration, resume_flags)
                break
    if done > 0:
        elapsed = time.perf_counter() - began
        log.info("trained %s %d iterations in %.1f s (%.2f s/iteration)", stage, done, elapsed, elapsed / done)


def train_drnet(config: dict, device: torch.device, data: tuple[ClipDataset, ClipDataset]) -> DRNet:
    """Train DRNET as the resolved config says on the (train, test) clips, in `config['run_dir']`; return it."""
    run_dir = Path(config["run_dir"])
    train_set, test_set = data
    generator = torch.Generator().manual_seed(config["seed"])
    torch.manual_seed(config["seed"])
    model = DRNet(config).to(device)
    optimizers = make_optimizers(model, config)
    start = 0
    if config["resume_from"] is not None:
        path = Path(config["resume_from"])
        checkpoint = load_checkpoint(path, map_location=device)
        check_architecture(checkpoint, config, path)
        model.load_state_dict(checkpoint["model"])
        for name, optimizer in optimizers.items():
            load_optimizer(optimizer, checkpoint["optimizers"][name], config)
        set_rng_state(checkpoint["rng"], generator)
        start = checkpoint["iteration"]
        log.info("resumed from %s at iteration %d", path, start)
        restore_periodic(run_dir, path, start)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # Fixed test clips, drawn from their own generator so that pictures never shift the training stream.
    test_generator = torch.Generator().manual_seed(config["seed"] + 1)
    test_frames = test_set.drnet_batch(TEST_CLIPS, test_generator).to(device)
    test_clips = test_set.sequence_batch(9, min(config["max_step"], 10), test_generator).to(device)
    mnist = isinstance(test_set, MovingMNIST)
    swaps = swap_set(test_set, SWAP_CLIPS, test_generator) if mnist else None
    channels = digit_channels(test_set) if mnist else slice(None)

    metrics = MetricsLog(run_dir / "metrics.csv", METRICS, resume_from=start if start else None)
    test_metrics = MetricsLog(run_dir / "test_metrics.csv", TEST_METRICS, resume_from=start if start else None)
    test_csv = run_dir / "test_metrics.csv"
    curves = {"content transfer, content ratio": [(test_csv, "test_content_transfer"),
                                                  (test_csv, "test_content_ratio")],
              "reconstruction (mse)": [(run_dir / "metrics.csv", "rec"), (test_csv, "test_rec_mse")],
              "similarity (mse), content spread": [(run_dir / "metrics.csv", "sim"), (test_csv, "test_content_spread")],
              "scene discriminator loss": [(run_dir / "metrics.csv", "disc_loss"), (run_dir / "metrics.csv", "adv")],
              "scene discriminator accuracy": [(run_dir / "metrics.csv", "disc_acc")]}

    def save_everything(iteration: int, data_state: torch.Tensor) -> None:
        save_run_state(run_dir, model, optimizers, config, iteration, data_state, config["keep_checkpoints"])
        test_values = report_test_clips(model, test_frames, test_clips, run_dir / "samples", iteration, swaps,
                                        channels)
        test_metrics.append(iteration, test_values)
        plot_curves(curves, run_dir / "loss_curves.png")
        transfer = (f"content transfer {test_values['test_content_transfer']:.3f}, " if mnist else "")
        log.info("iteration %d: %stest reconstruction mse %.5f, content ratio %.3f, spread %.4f; checkpoint %s",
                 iteration, transfer, test_values["test_rec_mse"], test_values["test_content_ratio"],
                 test_values["test_content_spread"], checkpoint_path(run_dir))

    model.train()
    # `generator` draws the batches only (possibly ahead, on the loader thread); the discriminator's pairs
    # come from torch's global generator, which checkpoints save as well.
    batches = BatchStream(lambda g: train_set.drnet_batch(config["batch_size"], g), generator,
                          config["data_threads"])

    def step(frames: torch.Tensor) -> dict[str, float]:
        return train_step(model, optimizers, frames.to(device, non_blocking=True), config["alpha"], config["beta"],
                          torch.default_generator)

    run_iterations(config, start, "DRNET", batches, step, metrics, save_everything, "--resume True")
    return model
