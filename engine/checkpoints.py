"""A run of either training stage on disk: its directory, the checkpoint format, writing, verifying, exporting
and loading checkpoints, resume and random states, and `load_model`, which rebuilds any checkpoint's model.

A run directory holds config.json, train.log, metrics.csv, test_metrics.csv, loss_curves.png, samples/,
checkpoint.pt (the latest) and checkpoints/iter_N.pt (periodic copies); the LSTM stage's run is the
`lstm/` folder of its DRNET's run directory. A checkpoint is a dict of plain values and tensors:
- kind "drnet" (checkpoints older than `kind` are DRNET ones): config, iteration, model (the `DRNet`
  state dict), optimizers {"main", "discriminator"}, rng (`rng_state`; a run of several processes adds
  every rank's data generator state as rng["data_ranks"]);
- kind "lstm": config (the LSTM stage's), drnet_config, iteration, model (the DRNET's weights), lstm
  (the pose LSTM's), optimizers {"lstm"}, rng;
- kind "pose_lstm" (`export_lstm`): config, iteration, lstm, and the name and weights' checksum of the
  DRNET export beside it, with which `load_checkpoint` combines it into a kind "lstm" checkpoint.
Both, and the half-precision exports, hold checksums {part: `tensor_checksum(checkpoint[part])`} of each part
that holds tensors (files older than checksums have none). Every path reads a checkpoint once, through
`load_checkpoint` (which verifies the checksums and refuses non-finite weights), and passes the loaded dict
on; `load_model(path)` rebuilds the model of any checkpoint file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from engine import distributed
from models import HEAD_DEFAULTS, Architecture, DRNet, DRNetPredictor
from utils import DRNetError, copy_checkpoint, named_tensors, read_metrics, save_checkpoint

log = logging.getLogger("drnet")

ARCHITECTURE_KEYS = tuple(f.name for f in fields(Architecture))  # config keys that fix the DRNET networks
LSTM_SHAPE_KEYS = ("rnn_size", "rnn_layers")  # config keys that fix the pose LSTM's weight shapes


# ---- The run directory ----

def run_dir_of(save_dir: str | None, dataset: str, use_skip: bool, lstm: bool = False) -> Path:
    """--save_dir, else runs/<dataset> (with a _skip suffix when skip connections are on); its lstm/ for the LSTM."""
    drnet_dir = Path(save_dir or Path("runs") / (dataset + ("_skip" if use_skip else "")))
    return drnet_dir / "lstm" if lstm else drnet_dir


def checkpoint_path(run_dir: Path, iteration: int | None = None) -> Path:
    """The latest checkpoint of a run directory, or the periodic one of `iteration`."""
    if iteration is None:
        return run_dir / "checkpoint.pt"
    return run_dir / "checkpoints" / f"iter_{iteration:07d}.pt"


def prepare_run_dir(config: dict) -> Path:
    """The run directory of a resolved config, with its samples/ folder and the config written as config.json."""
    run_dir = Path(config["run_dir"])
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir


# ---- Random states and the checkpoint format ----

def rng_state(data_state: torch.Tensor | list[torch.Tensor]) -> dict:
    """Every random state a run depends on: the data generator's before the next batch, torch's CPU and CUDA.

    A run of several processes passes every rank's data generator state (`distributed.gather_states`); torch's
    own generators are the same on every rank (one seed, the same draws), so rank 0's stand for all.
    """
    ranks = data_state if isinstance(data_state, list) else [data_state]
    state = {"data": ranks[0], "torch": torch.get_rng_state()}
    if len(ranks) > 1:
        state["data_ranks"] = ranks
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what `rng_state` saved; each rank takes its own data generator state where the checkpoint has it.

    A rank beyond those the checkpoint holds (a single-process checkpoint resumed by several processes) keeps
    its freshly seeded stream (`distributed.data_seed`), which no earlier rank drew from.
    """
    ranks = state.get("data_ranks", [state["data"]])
    if distributed.rank() < len(ranks):
        generator.set_state(ranks[distributed.rank()])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def drnet_checkpoint(model: DRNet, optimizers: dict[str, torch.optim.Optimizer], config: dict, iteration: int,
                     data_state: torch.Tensor | list[torch.Tensor]) -> dict:
    """The DRNET checkpoint of `iteration`, whose next batch `data_state` draws."""
    return {"kind": "drnet", "config": config, "iteration": iteration, "model": model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "rng": rng_state(data_state)}


def lstm_checkpoint(model: DRNetPredictor, optimizer: torch.optim.Optimizer, config: dict, iteration: int,
                    data_state: torch.Tensor | list[torch.Tensor]) -> dict:
    """The LSTM-stage checkpoint of `iteration`: self-contained, it holds the frozen DRNET and its config too."""
    return {"kind": "lstm", "config": config, "drnet_config": model.config, "iteration": iteration,
            "model": model.drnet_state_dict(), "lstm": model.lstm.state_dict(),
            "optimizers": {"lstm": optimizer.state_dict()}, "rng": rng_state(data_state)}


def non_finite_tensors(state: object) -> list[str]:
    """Names (dotted paths) of the floating-point tensors in a nested state that hold NaN or infinity."""
    return [name for name, tensor in named_tensors(state)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def tensor_checksum(state: dict) -> str:
    """SHA-256 (hex) of the tensors of a nested state as stored: each one's name, dtype, shape and bytes, in
    sorted name order. About 1 GB/s: 0.1 s for a 10 M-parameter DRNET with its Adam state."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors(state), key=lambda item: item[0]):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def with_checksums(state: dict) -> dict:
    """`state` with the checksum of each of its parts that holds tensors, as every checkpoint file carries."""
    parts = {part: value for part, value in state.items() if part != "checksums"}
    return {**parts, "checksums": {part: tensor_checksum(value) for part, value in parts.items()
                                   if next(named_tensors(value), None) is not None}}


def check_integrity(checkpoint: dict, path: Path) -> None:
    """Refuse a checkpoint whose tensors changed after it was written (a stored checksum differs), or whose
    weights hold NaN or infinity; files older than checksums are checked for the latter only."""
    stored = checkpoint.get("checksums", {})
    if not isinstance(stored, dict):
        raise DRNetError(f"{path} is not a DRNET checkpoint of this project")
    for part, checksum in stored.items():
        if part not in checkpoint or tensor_checksum(checkpoint[part]) != checksum:
            raise DRNetError(f"{path} is corrupt: its {part} tensors differ from the checksum stored with them (the "
                             "file changed after it was written: a faulty disk, copy or download); use another copy "
                             "or an earlier checkpoint (checkpoints/iter_N.pt, resumed with --start_iter N)")
    bad = non_finite_tensors({part: checkpoint[part] for part in ("model", "lstm") if part in checkpoint})
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise DRNetError(f"{path} holds non-finite weights (NaN or infinity in {bad[0]}{more}): a model that "
                         "cannot compute anything; use an earlier checkpoint")


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
    save_checkpoint(with_checksums(state), checkpoint_path(run_dir))
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


def has_report(run_dir: Path, iteration: int) -> bool:
    """Whether test_metrics.csv of a run directory holds the periodic test report of `iteration`."""
    path = run_dir / "test_metrics.csv"
    return path.is_file() and any(row["iteration"] == iteration for row in read_metrics(path))


def report_missing(run_dir: Path, start: int, report: Callable[[int], None]) -> None:
    """Resuming at `start`, run the periodic test report of that iteration if a run stopped between its
    checkpoint and its report (`kill -9`) never wrote it: test metrics row, pictures and curves."""
    if start and not has_report(run_dir, start):
        log.info("iteration %d: writing its test report, which the run that saved it did not finish", start)
        report(start)


def restore_periodic(run_dir: Path, resumed_from: Path, iteration: int) -> None:
    """Resuming from the latest checkpoint, write its periodic copy again if a run was killed while copying it."""
    if resumed_from == checkpoint_path(run_dir) and not checkpoint_path(run_dir, iteration).exists():
        log.info("restored the missing periodic copy %s", copy_to_periodic(run_dir, iteration))


def export_weights(checkpoint: dict, path: str | Path) -> None:
    """Save a checkpoint's weights in half precision, without optimizer or random states, for shipping.

    `load_model` reads the result like any checkpoint (loading casts the weights back to float32).
    """
    kept = {k: v for k, v in checkpoint.items() if k not in ("optimizers", "rng")}
    kept["model"] = half_precision(checkpoint["model"])
    if "lstm" in checkpoint:
        kept["lstm"] = half_precision(checkpoint["lstm"])
    save_checkpoint(with_checksums(kept), path)  # the checksums of the half-precision tensors, as stored


def half_precision(state: dict) -> dict:
    """A state dict with its floating-point tensors in half precision."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def export_lstm(checkpoint: dict, drnet_file: str | Path, path: str | Path) -> None:
    """Save the pose LSTM of an LSTM-stage checkpoint alone, in half precision, paired with `drnet_file`.

    `drnet_file` is a half-precision export of the DRNET the LSTM was trained on (the DRNET weights of
    `checkpoint` in half precision must equal its own); the result names it and holds the checksum of its
    weights, so that `load_checkpoint` combines the two and notices when that file changed. A new LSTM for
    a shipped DRNET thus adds a file of 2-9 MB (256 or 512 units) instead of another copy of the 23 MB DRNET.
    """
    drnet_file = Path(drnet_file)
    drnet = load_checkpoint(drnet_file)
    paired = tensor_checksum(drnet["model"])
    if tensor_checksum(half_precision(checkpoint["model"])) != paired:
        raise DRNetError(f"{drnet_file} does not hold the DRNET this LSTM was trained on")
    lstm_file = {"kind": "pose_lstm", "config": checkpoint["config"], "iteration": checkpoint["iteration"],
                 "lstm": half_precision(checkpoint["lstm"]), "drnet_file": drnet_file.name, "drnet_checksum": paired}
    save_checkpoint(with_checksums(lstm_file), path)


def paired_with_drnet(lstm_file: dict, path: Path, map_location: str | torch.device) -> dict:
    """The LSTM-stage checkpoint of a pose-LSTM file (`export_lstm`) and the DRNET file beside it."""
    drnet_path = path.parent / lstm_file["drnet_file"]
    drnet = load_checkpoint(drnet_path, map_location)
    if tensor_checksum(drnet["model"]) != lstm_file["drnet_checksum"]:
        raise DRNetError(f"{drnet_path} does not hold the DRNET weights that {path.name} was trained on (their "
                         "checksum differs: the file is corrupt or was replaced); use the copy that came with it")
    return {"kind": "lstm", "config": lstm_file["config"], "drnet_config": drnet.get("drnet_config", drnet["config"]),
            "iteration": lstm_file["iteration"], "model": drnet["model"], "lstm": lstm_file["lstm"]}


# ---- Reading checkpoints ----

def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of plain tensors and values (`weights_only=True`), or raise a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DRNetError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's message advises loading with weights_only=False, which runs whatever code the file holds:
        # a file of this project never needs that, so name the object and refuse.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise DRNetError(f"{path} is not a plain checkpoint of this project: it holds a Python object{what} that "
                         "loading would have to run as code; it was not loaded") from error
    except Exception as error:  # truncated, corrupt, or not a checkpoint at all
        raise DRNetError(f"cannot read checkpoint {path}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'unreadable'}") from error
    if isinstance(checkpoint, dict) and checkpoint.get("kind") == "pose_lstm" and "drnet_file" in checkpoint:
        check_integrity(checkpoint, path)
        return paired_with_drnet(checkpoint, path, map_location)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
        raise DRNetError(f"{path} is not a DRNET checkpoint of this project")
    check_integrity(checkpoint, path)
    return checkpoint


def checkpoint_to_resume(run_dir: Path, start_iter: int | None, what: str, start_command: str) -> tuple[Path, dict]:
    """The checkpoint `--resume` (or `--start_iter`) asks for in `run_dir`, loaded; or an error saying how to start."""
    path = checkpoint_path(run_dir, start_iter or None)
    if not path.is_file():
        raise DRNetError(f"nothing to resume: no {what} {path}; start a run with `{start_command}` "
                         "(or pass its --save_dir)")
    return path, load_checkpoint(path)


def architecture_values(config: dict) -> dict:
    """`config` with the code-head options filled in where a checkpoint older than the options lacks them."""
    return {**HEAD_DEFAULTS, **config}


def check_architecture(checkpoint: dict, config: dict, path: Path, keys: tuple[str, ...] = ARCHITECTURE_KEYS
                       ) -> None:
    """Refuse a checkpoint from another dataset, or whose networks differ in `keys` (default: all of them)."""
    stored, asked = architecture_values(checkpoint["config"]), architecture_values(config)
    mismatched = [f"{k}={stored.get(k)!r} (asked: {asked.get(k)!r})" for k in keys if stored.get(k) != asked.get(k)]
    if checkpoint["config"].get("dataset") != config["dataset"]:
        mismatched.insert(0, f"dataset={checkpoint['config'].get('dataset')!r} (asked: {config['dataset']!r})")
    if mismatched:
        raise DRNetError(f"{path} holds a different architecture: {', '.join(mismatched)}")


def resume(checkpoint: dict, optimizers: dict[str, torch.optim.Optimizer], config: dict,
           generator: torch.Generator) -> int:
    """Restore the optimizers and random states of `config['resume_from']`, loaded; return its iteration.

    A run killed while copying the latest checkpoint to its periodic one gets that copy again.
    """
    for name, optimizer in optimizers.items():
        load_optimizer(optimizer, checkpoint["optimizers"][name], config)
    set_rng_state(checkpoint["rng"], generator)
    start = checkpoint["iteration"]
    log.info("resumed from %s at iteration %d", config["resume_from"], start)
    stored = len(checkpoint["rng"].get("data_ranks", [None]))
    if distributed.world_size() > stored:
        log.info("the checkpoint holds the data streams of %d process(es): ranks %d to %d start fresh ones",
                 stored, stored, distributed.world_size() - 1)
    if distributed.is_main():
        restore_periodic(Path(config["run_dir"]), Path(config["resume_from"]), start)
    return start


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict, config: dict) -> None:
    """Restore an optimizer's state, then apply the config's lr and beta1 (flags given when resuming win)."""
    fused = [group.get("fused") for group in optimizer.param_groups]  # what this device supports, not the saver's
    optimizer.load_state_dict(state)  # this also restores the stored lr, betas and fused setting
    for group, group_fused in zip(optimizer.param_groups, fused, strict=True):
        group["lr"], group["betas"] = config["lr"], (config["beta1"], group["betas"][1])
        group["fused"] = group_fused


def model_from_checkpoint(checkpoint: dict) -> DRNet:
    """The model of a loaded checkpoint: a `DRNet`, or for an LSTM-stage checkpoint a `DRNetPredictor`."""
    if checkpoint.get("kind") == "lstm":
        return predictor_on(checkpoint, checkpoint["config"])
    model = DRNet(checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model


def predictor_on(checkpoint: dict, lstm_config: dict) -> DRNetPredictor:
    """The DRNET of a loaded checkpoint with a pose LSTM shaped as `lstm_config` says.

    The LSTM is the stored one of an LSTM-stage checkpoint, a freshly initialised one on a DRNET checkpoint.
    """
    lstm_stage = checkpoint.get("kind") == "lstm"
    model = DRNetPredictor(checkpoint["drnet_config"] if lstm_stage else checkpoint["config"], lstm_config)
    model.load_weights(checkpoint["model"], checkpoint["lstm"] if lstm_stage else model.lstm.state_dict())
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DRNet:
    """Rebuild the trained model from a checkpoint file alone; returned on `device`, in eval mode.

    A DRNET checkpoint gives a `DRNet`; an LSTM-stage checkpoint gives a `DRNetPredictor` (with `predict`).
    """
    return model_from_checkpoint(load_checkpoint(path, map_location=device)).to(device).eval()
