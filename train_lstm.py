"""LSTM training, the second stage: the pose LSTM on a trained, frozen DRNET, and its rollouts.

Run by `python main.py --use_lstm True`; the run lives in `<DRNET run directory>/lstm/`. Here: the loss
(teacher-forced, or reading back its own predictions as in generation) and step, the pool of encoded
training clips, the test MSE per prediction step next to the copy-last-frame baseline, the periodic
roll-outs, and the entry point `train_lstm`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets import ClipDataset
from datasets.moving_mnist import MovingMNIST
from datasets.prefetch import BatchStream
from engine import distributed
from engine.board import Board
from engine.checkpoints import (
    checkpoint_path,
    lstm_checkpoint,
    predictor_on,
    prepare_run_dir,
    report_missing,
    resume,
    write_checkpoints,
)
from engine.loop import run_iterations
from engine.pictures import plot_curves, save_rollout, strip_every
from engine.precision import FP32, CapturedStep, Precision, adam, autocast, compile_networks, set_capturable
from models import DRNetPredictor, PoseLSTM
from utils import DRNetError, MetricsLog, save_checkpoint

log = logging.getLogger("drnet")

REPORT_STEPS = (1, 10, 50, 100)  # prediction steps whose test MSE is logged (those within --rollout_len)
METRIC_CLIPS = 32  # fixed test clips for the MSE per step; enough to compare with the baseline, cheap on a CPU
PICTURE_CLIPS = 4  # fixed test clips shown in the strips and GIFs


def input_noise(shape: torch.Size, sigma: float, seed: int, iteration: int, device: torch.device,
                clean: int = 0) -> torch.Tensor | None:
    """Gaussian noise of standard deviation `sigma` for the poses (B, T, p) the LSTM reads at `iteration`, zero
    on the first `clean` of them; None for sigma 0.

    Drawn from a generator seeded by (seed, iteration) alone, so a resumed run adds exactly the noise the
    uninterrupted run would have, with no generator state to store.
    """
    if sigma == 0:
        return None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
    noise = sigma * torch.randn(shape, generator=generator)
    noise[:, :clean] = 0
    return noise.to(device)


def read_back_pattern(steps: int, observed: int, free_steps: int) -> list[bool]:
    """Which of `steps` LSTM inputs are its own predictions: none of the first `observed`, then runs of
    `free_steps` predictions read back, each followed by one true pose. 0 free steps: teacher forcing."""
    return [free_steps > 0 and t >= observed and (t - observed) % (free_steps + 1) != free_steps
            for t in range(steps)]


def pose_loss(lstm: PoseLSTM, h_c: torch.Tensor, h_p: torch.Tensor, read_back: list[bool] | None = None,
              noise: torch.Tensor | None = None, precision: Precision = FP32) -> torch.Tensor:
    """Mean squared error of h_p(t) predicted over all T-1 transitions of h_p (B, T, p).

    Teacher-forced by default (the paper, both authors' codes): every step reads [h_p(t-1), h_c]. Where
    `read_back` (T-1 flags, `read_back_pattern`) says so, a step reads the LSTM's own previous prediction
    instead, as in generation, as an input only: no gradient flows through it (`PoseLSTM.unroll`). `noise`
    (B, T-1, p) is added to the true poses read (`--pose_noise`); the targets stay the true poses. The LSTM runs
    under `precision`'s autocast (`--amp_lstm`); the loss is always fp32.
    """
    inputs = h_p[:, :-1] if noise is None else h_p[:, :-1] + noise
    with autocast(precision, h_p.device):
        predicted = lstm.unroll(h_c, inputs, read_back or [False] * (h_p.shape[1] - 1)).float()
    target = h_p[:, 1:]
    if predicted.shape != target.shape:  # never broadcast a prediction against its target
        raise ValueError(f"prediction {tuple(predicted.shape)} and target {tuple(target.shape)} differ")
    return F.mse_loss(predicted, target)


@torch.no_grad()  # the DRNET is frozen: its vectors are fixed inputs and targets
def encode_clips(model: DRNetPredictor, clips: torch.Tensor, n_past: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM's inputs of clips (B, T, C, H, W): the content vector of frame n_past (B, c), the poses (B, T, p).

    Float32 whatever precision the encoders ran in: the LSTM itself always trains in float32.
    """
    return model.encode_content(clips[:, n_past - 1]).h.float(), model.encode_pose_sequence(clips).float()


def lstm_update(lstm: PoseLSTM, optimizer: torch.optim.Optimizer, content: torch.Tensor, poses: torch.Tensor,
                read_back: list[bool] | None = None, noise: torch.Tensor | None = None,
                precision: Precision = FP32) -> torch.Tensor:
    """One LSTM update on encoded clips: content (B, c), poses (B, T, p); `read_back`, `noise` and `precision`
    as in `pose_loss`.

    Returns the MSE, detached.
    """
    loss = pose_loss(lstm, content, poses, read_back, noise, precision)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(optimizer)  # several processes: the gradient of the global batch
    optimizer.step()
    return loss.detach()


def captured_update(lstm: PoseLSTM, optimizer: torch.optim.Optimizer, example: tuple[torch.Tensor, ...],
                    read_back: list[bool], precision: Precision = FP32, capture: bool = True
                    ) -> Callable[..., torch.Tensor]:
    """`lstm_update` as `--cuda_graph True` runs it on pool batches: recorded once as a CUDA graph and replayed.

    Eager, an update launches its kernels one by one (the fused LSTM layers, embedding, output layer, loss and
    Adam); a replay launches them at once. `example` is (content, poses) or (content, poses, noise)
    tensors of the batch's shapes, the inputs every later call copies its own into (`CapturedStep`).
    """
    graphed = CapturedStep(lambda *inputs: {"mse": lstm_update(lstm, optimizer, *inputs[:2], read_back, *inputs[2:],
                                                                 precision=precision)},
                           example, [lstm, optimizer], capture=capture)
    log.info("LSTM update captured as one CUDA graph" if capture else "LSTM update on static inputs")
    return lambda *inputs: graphed(*inputs)["mse"]


def lstm_step(model: DRNetPredictor, optimizer: torch.optim.Optimizer, clips: torch.Tensor, n_past: int
              ) -> torch.Tensor:
    """One LSTM update on clips (B, n_past + n_future, C, H, W); the DRNET only encodes. Returns the MSE, detached."""
    return lstm_update(model.lstm, optimizer, *encode_clips(model, clips, n_past))


class CodePool:
    """The frozen DRNET's vectors of the first `batches` training batches a run draws, kept for every later batch.

    The DRNET never changes in this stage, so a clip's content and pose vectors are the same whenever it is
    encoded: a batch drawn from stored vectors gives the LSTM exactly the gradients of encoding its clips
    again, at the cost of one LSTM step instead of every frame through both encoders (drnet-py's
    train_lstm.py encodes every batch). The pool fills as training starts, from the very batches an
    encode-every-batch run draws first, so a run no longer than the pool is that run bit for bit.
    """

    def __init__(self, batches: int, batch_size: int):
        if batches < 1 or batch_size < 1:
            raise ValueError(f"a pool needs at least one batch of one clip, got {batches} x {batch_size}")
        self.batches, self.batch_size = batches, batch_size
        self.chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.stored: tuple[torch.Tensor, torch.Tensor] | None = None  # all chunks in one tensor each, once full

    @property
    def full(self) -> bool:
        """Whether every batch of the pool has been encoded."""
        return self.stored is not None

    def add(self, content: torch.Tensor, poses: torch.Tensor) -> None:
        """Keep one encoded batch: content (B, c) and poses (B, T, p) of `batch_size` clips."""
        if self.full or content.shape[0] != self.batch_size or poses.shape[0] != self.batch_size:
            raise ValueError(f"the pool takes {self.batches} batches of {self.batch_size} clips; got a batch of "
                             f"{content.shape[0]} with {len(self.chunks)} stored")
        self.chunks.append((content, poses))
        if len(self.chunks) == self.batches:
            self.stored = (torch.cat([c for c, _ in self.chunks]), torch.cat([p for _, p in self.chunks]))
            self.chunks = []

    def indices(self, generator: torch.Generator) -> torch.Tensor:
        """The clips of one training batch once the pool is full: indices drawn uniformly, with replacement."""
        return torch.randint(self.batches * self.batch_size, (self.batch_size,), generator=generator)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored (content (B, c), poses (B, T, p)) of the clips at `indices`."""
        if self.stored is None:
            raise ValueError("the pool is not full yet")
        content, poses = self.stored
        indices = indices.to(content.device)
        return content[indices], poses[indices]


def freeze_drnet(model: DRNetPredictor) -> None:
    """Only the LSTM learns; the DRNET runs in eval mode, so BatchNorm uses its trained statistics."""
    model.requires_grad_(False)
    model.lstm.requires_grad_(True)
    model.eval()  # the LSTM has no layer that behaves differently in training, so eval suits all of it


def draw_test_clips(test_set: ClipDataset, count: int, length: int, fallback: int, generator: torch.Generator
                    ) -> torch.Tensor:
    """Fixed test clips of `length` frames, or of `fallback` frames where the dataset has none that long."""
    try:
        return test_set.sequence_batch(count, length, generator)
    except DRNetError as error:  # finite datasets (KTH) hold no 500-frame clips: ground truth ends earlier
        log.info("test clips of %d frames unavailable (%s); ground truth covers %d frames", length, error, fallback)
        return test_set.sequence_batch(count, fallback, generator)


def metric_columns(steps: list[int]) -> list[str]:
    """test_metrics.csv columns: the LSTM's MSE and the copy-last-frame baseline's at each step."""
    return [f"{name}_step{step}" for step in steps for name in ("mse", "copy_last")]


@torch.no_grad()
def step_mse(model: DRNetPredictor, clips: torch.Tensor, n_past: int, steps: list[int]) -> dict[str, float]:
    """Test MSE of the frames predicted `steps` ahead of `n_past` observed ones, and of repeating the last one."""
    predicted = model.predict(clips[:, :n_past], max(steps))
    last_seen = clips[:, n_past - 1]
    values = {}
    for step in steps:
        truth = clips[:, n_past + step - 1]
        values[f"mse_step{step}"] = F.mse_loss(predicted[:, step - 1], truth).item()
        values[f"copy_last_step{step}"] = F.mse_loss(last_seen, truth).item()
    return values


def train_lstm(config: dict, device: torch.device, data: tuple[ClipDataset, ClipDataset], checkpoint: dict,
               precision: Precision = FP32) -> DRNetPredictor:
    """Train the pose LSTM on the (train, test) clips as the config says, in `config['run_dir']`; return it.

    `checkpoint` is loaded and checked by main.py: the LSTM checkpoint of `config['resume_from']` when
    resuming, else the DRNET checkpoint of `config['drnet_checkpoint']` to freeze. The frozen DRNET encodes
    the training clips under `precision` (bf16 autocast or fp32); the LSTM, test metrics and roll-outs stay
    fp32. Started by torchrun, each process trains on its share of every batch and rank 0 alone writes
    (distributed.py); the frozen DRNET runs in eval mode, so its BatchNorm needs no other rank's statistics
    and is left as it is.
    """
    n_past, n_future = config["n_past"], config["n_future"]
    # Checkpoints older than --free_steps train teacher-forced, as they began.
    read_back = read_back_pattern(n_past + n_future - 1, n_past, config.get("free_steps", 0))
    generator = torch.Generator().manual_seed(distributed.data_seed(config["seed"]))
    torch.manual_seed(config["seed"])  # the same on every rank: equal initial weights
    model = predictor_on(checkpoint, config).to(device)
    freeze_drnet(model)
    optimizer = adam(model.lstm.parameters(), config["lr"], config["beta1"])
    start = 0
    if config["resume_from"] is not None:
        start = resume(checkpoint, {"lstm": optimizer}, config, generator)
    elif config.get("init_lstm"):
        log.info("pose LSTM and its frozen DRNET from %s, a fresh optimizer", config["init_lstm"])
    else:
        log.info("frozen DRNET from %s", config["drnet_checkpoint"])
    set_capturable(optimizer, bool(config.get("cuda_graph")))  # whatever a resumed checkpoint's run used
    if config.get("compile"):
        compile_networks(model)
    train_set, test_set = data
    if isinstance(train_set, MovingMNIST) and device.type != "cpu":
        train_set.render_on(device)  # 20-frame clips take the CPU longer to render than a GPU step
    metrics, save_everything, board = (reporting(config, model, optimizer, test_set, device, start)
                                       if distributed.is_main() else (None, None, None))

    batch_size = distributed.per_rank_batch(config["batch_size"], 1)

    def draw_clips(g: torch.Generator) -> torch.Tensor:
        return train_set.sequence_batch(batch_size, n_past + n_future, g)

    # Old checkpoints have no pool setting: they resume encoding every batch, as they began.
    pool = (CodePool(math.ceil(config["code_pool"] / batch_size), batch_size) if config.get("code_pool") else None)
    pool_file = Path(config["run_dir"]) / f"code_pool_rank{distributed.rank()}.pt"
    pool_key = {"batches": pool.batches if pool else 0, "batch_size": batch_size, "frames": n_past + n_future,
                "seed": config["seed"], "precision": precision.name, "drnet_checkpoint": config["drnet_checkpoint"]}
    if pool is not None and start:
        refill_pool(pool, pool_file, pool_key, lambda clips: encode_clips(model, clips.to(device), n_past),
                    draw_clips, distributed.data_seed(config["seed"]), min(start, pool.batches), precision, device)
    drawn, iteration = start, start
    # Checkpoints older than --pose_noise read the true poses as they are, as they began.
    noise_sigma, noise_seed = config.get("pose_noise", 0.0), distributed.data_seed(config["seed"])
    clean_inputs = 0 if config.get("noise_observed", True) else n_past  # a roll-out reads true observed poses
    # The LSTM trains in fp32 unless --amp_lstm: bf16 autocast made an update of 100 clips slower at 256 units on
    # an AMX Xeon (0.61 s against 0.37 s), 1.7x faster at 512 units on an AVX-512 bf16 EPYC. Test roll-outs,
    # evaluation and generation stay fp32 either way; per iteration it learns as fp32 does (docs/lstm_finetunes.md).
    lstm_precision = precision if config.get("amp_lstm") else FP32
    if config.get("amp_lstm") and precision.dtype is None:
        log.info("--amp_lstm True: the LSTM trains in fp32 all the same, since --amp resolved to fp32 here")

    def draw(g: torch.Generator) -> torch.Tensor:
        """Clips while the pool fills (or without a pool), then a batch of pool indices (1-D)."""
        nonlocal drawn
        drawn += 1
        return pool.indices(g) if pool is not None and drawn > pool.batches else draw_clips(g)

    batches = BatchStream(draw, generator, config["data_threads"], pin_memory=device.type == "cuda")
    update = None  # lstm_update, or its captured graph once the pool is full (--cuda_graph True)

    def step(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal iteration, update
        iteration += 1
        if batch.dim() == 1:
            content, poses = pool.batch(batch)
        else:
            with autocast(precision, device):  # the frozen DRNET's encoders: bf16 where --amp chose it
                content, poses = encode_clips(model, batch.to(device, non_blocking=True), n_past)
            if pool is not None:
                pool.add(content, poses)
                if pool.full:
                    store_pool(pool, pool_file, pool_key)
        noise = input_noise(poses[:, :-1].shape, noise_sigma, noise_seed, iteration, poses.device,
                            clean_inputs)
        inputs = (content, poses) if noise is None else (content, poses, noise)
        if update is None and config.get("cuda_graph") and pool.full:  # the encoding batches stay eager
            update = captured_update(model.lstm, optimizer, inputs, read_back, lstm_precision)
        if update is None:
            return {"mse": lstm_update(model.lstm, optimizer, content, poses, read_back, noise, lstm_precision)}
        return {"mse": update(*inputs)}

    run_iterations(config, start, "LSTM", batches, step, metrics, save_everything, "--resume True --use_lstm True")
    if board is not None:
        board.close()
    return model


def refill_pool(pool: CodePool, path: Path, key: dict, encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                draw: Callable[[torch.Generator], torch.Tensor], seed: int, batches: int, precision: Precision,
                device: torch.device) -> None:
    """Give a resumed run the `batches` pool batches it had: read from `path` if stored whole, else encoded again.

    The pool's batches are the first a run draws from its data seed, so drawing them again from a fresh
    generator and encoding them under the same precision gives the same vectors.
    """
    if batches == pool.batches and path.is_file():
        try:
            stored = torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # unreadable: encode again, which gives the same vectors
            log.info("clip pool: %s unreadable (%s); encoding it again", path, type(error).__name__)
        else:
            if stored.get("key") == key:
                pool.stored = (stored["content"], stored["poses"])
                log.info("clip pool: %d encoded clips read from %s", pool.batches * pool.batch_size, path)
                return
            log.info("clip pool: %s holds other settings; encoding the pool again", path)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(batches), desc="encoding the clip pool again", unit="batch", dynamic_ncols=True,
                  disable=not distributed.is_main()):
        with autocast(precision, device):
            pool.add(*encode(draw(generator)))
    if pool.full:  # e.g. resumed with another --code_pool: keep it, or every later resume encodes it again
        store_pool(pool, path, key)


def store_pool(pool: CodePool, path: Path, key: dict) -> None:
    """Write a full pool with the settings that made it, for a resumed run to read back."""
    save_checkpoint({"key": key, "content": pool.stored[0], "poses": pool.stored[1]}, path)
    log.info("clip pool full: %d clips encoded; every later batch draws from them (%s)",
             pool.batches * pool.batch_size, path.name)


def reporting(config: dict, model: DRNetPredictor, optimizer: torch.optim.Optimizer, test_set: ClipDataset,
              device: torch.device, start: int
              ) -> tuple[MetricsLog, Callable[[int, torch.Tensor | list[torch.Tensor]], None], Board | None]:
    """What rank 0 writes: the run directory, the metrics logs, and the periodic save (checkpoint, test MSE,
    roll-outs, curves). The model is in eval mode throughout, so these need no other rank."""
    n_past, n_future, rollout_len = config["n_past"], config["n_future"], config["rollout_len"]
    run_dir = prepare_run_dir(config)
    # Fixed test clips from their own generator, so that pictures never shift the training stream.
    test_generator = torch.Generator().manual_seed(config["seed"] + 1)
    wanted_steps = [step for step in REPORT_STEPS if step <= rollout_len]
    metric_clips = draw_test_clips(test_set, METRIC_CLIPS, n_past + max(wanted_steps), n_past + n_future,
                                   test_generator).to(device)
    steps = [step for step in wanted_steps if n_past + step <= metric_clips.shape[1]]
    picture_clips = draw_test_clips(test_set, PICTURE_CLIPS, n_past + rollout_len, n_past + n_future,
                                    test_generator).to(device)

    resume_from = start if start else None
    board = Board(run_dir) if config.get("tensorboard") else None
    mirror = board.scalars if board is not None else None
    metrics = MetricsLog(run_dir / "metrics.csv", ["mse"], resume_from=resume_from, mirror=mirror)
    test_metrics = MetricsLog(run_dir / "test_metrics.csv", metric_columns(steps), resume_from=resume_from,
                              mirror=mirror)
    free_steps = config.get("free_steps", 0)
    how = f"reading back {free_steps} predictions at a time" if free_steps else "teacher forced"
    curves = {f"pose LSTM mse ({how})": [(run_dir / "metrics.csv", "mse")],
              "test frame mse by prediction step": [(run_dir / "test_metrics.csv", c) for c in metric_columns(steps)]}

    def save_everything(iteration: int, data_state: torch.Tensor | list[torch.Tensor]) -> None:
        write_checkpoints(run_dir, lstm_checkpoint(model, optimizer, config, iteration, data_state), iteration,
                          config["keep_checkpoints"])
        report(iteration)

    def report(iteration: int) -> None:
        values = step_mse(model, metric_clips, n_past, steps)
        test_metrics.append(iteration, values)
        strip, animation, video = save_rollout(model, picture_clips, n_past, rollout_len, run_dir / "samples",
                                        f"rollout_{iteration:07d}")
        plot_curves(curves, run_dir / "loss_curves.png")
        if board is not None:
            board.pictures(iteration, sorted((run_dir / "samples").glob(f"*_{iteration:07d}.*")))
        report = ", ".join(f"step {s} {values[f'mse_step{s}']:.5f} (copy-last {values[f'copy_last_step{s}']:.5f})"
                           for s in steps)
        animations = animation.name + (f" and {video.name}" if video else "")
        log.info("iteration %d: test frame mse %s; %d-frame rollout in %s (1 in %d generated frames shown) and "
                 "%s; checkpoint %s", iteration, report, rollout_len, strip.name, strip_every(rollout_len),
                 animations, checkpoint_path(run_dir))

    report_missing(run_dir, start, report)
    return metrics, save_everything, board
