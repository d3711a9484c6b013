"""DRNET training, the first stage: a scene-discriminator step, then the main step, per iteration.

Run by `python main.py`: the losses (similarity, adversarial, reconstruction), the discriminator and main
steps (eager, paired with the authors' sampling, or captured as one CUDA graph), the periodic test metrics
and pictures, and the stage's entry point `train_drnet`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets import ClipDataset
from datasets.moving_mnist import MovingMNIST
from datasets.prefetch import BatchStream
from engine import distributed
from engine.board import Board
from engine.checkpoints import (
    checkpoint_path,
    drnet_checkpoint,
    prepare_run_dir,
    report_missing,
    resume,
    write_checkpoints,
)
from engine.loop import run_iterations
from engine.pictures import ANALOGY_FRAMES, plot_curves, save_analogy_grid, save_image_grid
from engine.precision import (
    FP32,
    CapturedStep,
    Precision,
    adam,
    autocast,
    compile_networks,
    set_capturable,
    to_channels_last,
    uses_channels_last,
)
from evaluation.metrics import mse
from evaluation.transfer import SwapSet, content_transfer, digit_channels, invariance_ratio, swap_set
from models import DRNet, discriminator_pairs
from utils import MetricsLog

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


def pair_indices(batch: int, generator: torch.Generator, device: torch.device, pin: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which row of h_p2 each row of h_p1 is paired with for the scene discriminator, and the labels (1: same clip).

    They are `discriminator_pairs`' pairs, drawn from `generator` as it draws them, as indices: a step that takes
    them as inputs reads nothing on the host, so it can be captured in a CUDA graph (`pin`: copied from
    page-locked memory, without waiting for the device).
    """
    rows = torch.arange(batch, dtype=torch.float32)[:, None]  # exact as floats far beyond any batch size
    _, partner, labels = discriminator_pairs(rows, rows, generator)
    partner = partner[:, 0].long()
    if pin:
        partner, labels = partner.pin_memory(), labels.pin_memory()
    return partner.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)


def discriminator_step(model: DRNet, optimizer: torch.optim.Optimizer, h_p1: torch.Tensor, h_p2: torch.Tensor,
                       partner: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Update the scene discriminator on detached pose vectors, row i of h_p1 against row partner[i] of h_p2;
    return its loss and accuracy (detached tensors)."""
    logits = model.scene_discriminator(h_p1.detach(), h_p2.detach().index_select(0, partner))
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(optimizer)  # several processes: the gradient of the global batch
    optimizer.step()
    accuracy = ((logits > 0).float() == labels).float().mean()
    return loss.detach(), accuracy


def train_step(model: DRNet, optimizers: dict, frames: torch.Tensor, alpha: float, beta: float,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One DRNET iteration on frames (4, B, C, H, W) = x_c1, x_c2, x_p1, x_p2, the discriminator's pairs drawn
    from `generator`; returns the metrics.

    The metrics stay tensors on the training device: reading one (`.item()`) would make the host wait for
    the device every iteration (runs.run_iterations reads them every few iterations).
    """
    return paired_step(model, optimizers, frames, *pair_indices(frames.shape[1], generator, frames.device),
                       alpha, beta)


def paired_step(model: DRNet, optimizers: dict, frames: torch.Tensor, partner: torch.Tensor, labels: torch.Tensor,
                alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """`train_step` with the discriminator's pairs given (`pair_indices`): no host read, so capturable."""
    x_c1, x_c2, x_p1, x_p2 = frames
    content = model.encode_content(x_c1)
    h_p1 = model.encode_pose(x_p1)
    with torch.no_grad():  # both are only ever used as fixed targets or detached inputs
        h_c2 = model.encode_content(x_c2).h
        h_p2 = model.encode_pose(x_p2)
    # The discriminator learns first on this batch's pose vectors, then the main step faces it, as in the
    # authors' drnet-py train_drnet.py.
    disc_loss, disc_acc = discriminator_step(model, optimizers["discriminator"], h_p1, h_p2, partner, labels)

    rec = F.mse_loss(model.decode(content, h_p1), x_p1)
    sim = similarity_loss(content.h, h_c2)
    model.scene_discriminator.requires_grad_(False)  # frozen in the main step: no gradient reaches it
    adv = adversarial_loss(model.scene_discriminator(h_p1, h_p2))
    model.scene_discriminator.requires_grad_(True)
    loss = drnet_loss(rec, sim, adv, alpha, beta)
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(optimizers["main"])
    optimizers["main"].step()
    return {"rec": rec.detach(), "sim": sim.detach(), "adv": adv.detach(), "disc_loss": disc_loss,
            "disc_acc": disc_acc}


def captured_step(model: DRNet, optimizers: dict, config: dict, train_set: ClipDataset, batch_size: int,
                  precision: Precision, device: torch.device, capture: bool = True
                  ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The training step as `--cuda_graph True` runs it: `paired_step` recorded as one CUDA graph (`CapturedStep`)
    and replayed on each batch, with the discriminator's pairs drawn on the host as the eager step draws them, so
    a captured run sees the same batches and pairs as an eager one.

    The graph is recorded on a batch drawn from a generator of its own, so the training stream is untouched.
    Moving MNIST's rendering stays outside the graph: its random draws are the CPU generator's (the same clips
    on every device), and the frames are rendered on the GPU already (`MovingMNIST.render_on`).
    """
    def run(frames: torch.Tensor, partner: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(precision, device, cache=False):
            return paired_step(model, optimizers, frames, partner, labels, config["alpha"], config["beta"])

    example = torch.Generator().manual_seed(config["seed"])
    frames = train_set.drnet_batch(batch_size, example).to(device)
    graphed = CapturedStep(run, [frames, *pair_indices(batch_size, example, device)],
                           [model, *optimizers.values()], capture=capture)
    log.info("training step captured as one CUDA graph" if capture else "training step on static inputs")

    def step(frames: torch.Tensor) -> dict[str, torch.Tensor]:
        pairs = pair_indices(frames.shape[1], torch.default_generator, device, pin=device.type == "cuda")
        return graphed(frames.to(device, non_blocking=True), *pairs)

    return step


def make_optimizers(model: DRNet, config: dict) -> dict[str, torch.optim.Optimizer]:
    """Adam for the encoders and decoder, and a separate Adam for the scene discriminator."""
    main_params = [*model.content_encoder.parameters(), *model.pose_encoder.parameters(),
                   *model.decoder.parameters()]
    return {"main": adam(main_params, config["lr"], config["beta1"]),
            "discriminator": adam(model.scene_discriminator.parameters(), config["lr"], config["beta1"])}


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


def save_run_state(run_dir: Path, model: DRNet, optimizers: dict, config: dict, iteration: int,
                   data_state: torch.Tensor | list[torch.Tensor], keep: int) -> None:
    """Write the DRNET checkpoint of `iteration`, whose next batch `data_state` draws (see `write_checkpoints`)."""
    write_checkpoints(run_dir, drnet_checkpoint(model, optimizers, config, iteration, data_state), iteration, keep)


def train_drnet(config: dict, device: torch.device, data: tuple[ClipDataset, ClipDataset],
                resumed: dict | None = None, precision: Precision = FP32) -> DRNet:
    """Train DRNET as the resolved config says on the (train, test) clips, in `config['run_dir']`; return it.

    `resumed` is the loaded checkpoint of `config['resume_from']` (main.py has read and checked it). The
    training steps run under `precision` (bf16 autocast or fp32); test metrics and pictures stay fp32.
    Started by torchrun, each process trains on its share of every batch and rank 0 alone writes (distributed.py).
    """
    train_set, test_set = data
    if isinstance(train_set, MovingMNIST) and device.type != "cpu":
        train_set.render_on(device)  # a GPU renders a batch in a fraction of the CPU's time
    generator = torch.Generator().manual_seed(distributed.data_seed(config["seed"]))
    torch.manual_seed(config["seed"])  # the same on every rank: equal initial weights, equal discriminator draws
    model = distributed.sync_batchnorm(DRNet(config), device).to(device)
    channels_last = uses_channels_last(precision, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        log.info("frames and weights channels_last: bf16 convolutions on a CPU run faster on that layout")
    optimizers = make_optimizers(model, config)
    start = 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        start = resume(resumed, optimizers, config, generator)
    for optimizer in optimizers.values():  # whatever the checkpoint's run used, as this run needs
        set_capturable(optimizer, bool(config.get("cuda_graph")))
    if config.get("compile"):
        compile_networks(model)
    metrics, save_everything, board = (reporting(config, model, optimizers, test_set, device, start)
                                       if distributed.is_main() else (None, None, None))

    model.train()
    # `generator` draws the batches only (possibly ahead, on the loader thread); the discriminator's pairs
    # come from torch's global generator, which checkpoints save as well.
    batch_size = distributed.per_rank_batch(config["batch_size"], 2)

    def step(frames: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = frames.to(device, non_blocking=True)
        with autocast(precision, device):
            return train_step(model, optimizers, to_channels_last(frames) if channels_last else frames,
                              config["alpha"], config["beta"], torch.default_generator)

    if config.get("cuda_graph"):  # captured before the loader thread starts: no other work on the GPU meanwhile
        step = captured_step(model, optimizers, config, train_set, batch_size, precision, device)
    batches = BatchStream(lambda g: train_set.drnet_batch(batch_size, g), generator, config["data_threads"],
                          pin_memory=device.type == "cuda")

    run_iterations(config, start, "DRNET", batches, step, metrics, save_everything, "--resume True")
    if board is not None:
        board.close()
    return model


def reporting(config: dict, model: DRNet, optimizers: dict, test_set: ClipDataset, device: torch.device,
              start: int) -> tuple[MetricsLog, Callable[[int, torch.Tensor | list[torch.Tensor]], None], Board | None]:
    """What rank 0 writes: the run directory, the metrics logs, and the periodic save (checkpoint, test metrics,
    pictures, curves). The test metrics run the model in eval mode, so they need no other rank."""
    run_dir = prepare_run_dir(config)
    # Fixed test clips, drawn from their own generator so that pictures never shift the training stream.
    test_generator = torch.Generator().manual_seed(config["seed"] + 1)
    test_frames = test_set.drnet_batch(TEST_CLIPS, test_generator).to(device)
    test_clips = test_set.sequence_batch(9, min(config["max_step"], ANALOGY_FRAMES), test_generator).to(device)
    mnist = isinstance(test_set, MovingMNIST)
    swaps = swap_set(test_set, SWAP_CLIPS, test_generator) if mnist else None
    channels = digit_channels(test_set) if mnist else slice(None)

    board = Board(run_dir) if config.get("tensorboard") else None
    mirror = board.scalars if board is not None else None
    metrics = MetricsLog(run_dir / "metrics.csv", METRICS, resume_from=start if start else None, mirror=mirror)
    test_metrics = MetricsLog(run_dir / "test_metrics.csv", TEST_METRICS, resume_from=start if start else None,
                              mirror=mirror)
    test_csv = run_dir / "test_metrics.csv"
    curves = {"content transfer, content ratio": [(test_csv, "test_content_transfer"),
                                                  (test_csv, "test_content_ratio")],
              "reconstruction (mse)": [(run_dir / "metrics.csv", "rec"), (test_csv, "test_rec_mse")],
              "similarity (mse), content spread": [(run_dir / "metrics.csv", "sim"), (test_csv, "test_content_spread")],
              "scene discriminator loss": [(run_dir / "metrics.csv", "disc_loss"), (run_dir / "metrics.csv", "adv")],
              "scene discriminator accuracy": [(run_dir / "metrics.csv", "disc_acc")]}

    def save_everything(iteration: int, data_state: torch.Tensor | list[torch.Tensor]) -> None:
        save_run_state(run_dir, model, optimizers, config, iteration, data_state, config["keep_checkpoints"])
        report(iteration)

    def report(iteration: int) -> None:
        test_values = report_test_clips(model, test_frames, test_clips, run_dir / "samples", iteration, swaps,
                                        channels)
        test_metrics.append(iteration, test_values)
        plot_curves(curves, run_dir / "loss_curves.png")
        if board is not None:
            board.pictures(iteration, sorted((run_dir / "samples").glob(f"*_{iteration:07d}.*")))
        transfer = (f"content transfer {test_values['test_content_transfer']:.3f}, " if mnist else "")
        log.info("iteration %d: %stest reconstruction mse %.5f, content ratio %.3f, spread %.4f; checkpoint %s",
                 iteration, transfer, test_values["test_rec_mse"], test_values["test_content_ratio"],
                 test_values["test_content_spread"], checkpoint_path(run_dir))

    report_missing(run_dir, start, report)
    return metrics, save_everything, board
