"""How a run is configured: the shared and LSTM-stage defaults, the valid range of every number, and the
resolution of flags, a resumed checkpoint's stored configuration and the dataset's defaults into one config.

Flags left unset take the dataset's defaults (datasets.registry.DATASETS), then the shared ones below. A resumed
run starts from the configuration stored in its checkpoint, changed only by the flags given explicitly. A new
pose-LSTM run takes its network shapes, and what its clips show, from the trained DRNET it freezes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from datasets.kth import preparation_commands
from datasets.prefetch import MAX_AHEAD
from datasets.registry import DATASETS, available
from engine.checkpoints import (
    ARCHITECTURE_KEYS,
    LSTM_SHAPE_KEYS,
    architecture_values,
    check_architecture,
    checkpoint_path,
    checkpoint_to_resume,
    has_report,
    load_checkpoint,
    run_dir_of,
)
from engine.pictures import ANALOGY_FRAMES
from engine.precision import Precision, resolve_precision
from models import HEAD_DEFAULTS, SUPPORTED_SIZES
from utils import DRNetError, resolve_device

DEFAULT_DATASET = "mnist"
# Shared defaults [py, seed]; per-dataset ones (sizes, architectures, dims, alpha, beta) live in DATASETS.
DEFAULTS = {"lr": 0.002, "beta1": 0.5, "batch_size": 100, "max_iter": 50000, "max_step": 20,
            "save_iters": 500, "seed": 1, "data_root": "data", "num_digits": 2, "keep_checkpoints": 5,
            "data_threads": 0, "device": "auto", "gpu": 0, "amp": "auto", "compile": False, "sync_every": 10,
            "tensorboard": False, "sampling": "independent", "cuda_graph": False, **HEAD_DEFAULTS}
# Flags that choose what to do or where, never stored as part of the model's configuration.
RUN_FLAGS = ("resume", "start_iter", "save_dir", "use_lstm", "evaluate", "checkpoint", "eval_clips", "eval_steps",
             "eval_dir", "config")

# LSTM stage [py, seed] (drnet-py's train_lstm.py): these replace or add to DEFAULTS when --use_lstm is on.
LSTM_DEFAULTS = {"lr": 0.0002, "beta1": 0.9, "n_past": 10, "n_future": 10, "rnn_size": 256, "rnn_layers": 2,
                 "rollout_len": 500, "code_pool": 20000, "free_steps": 0, "pose_noise": 0.0,
                 "noise_observed": True, "amp_lstm": False}
LSTM_COUNTS = ("n_past", "n_future", "rnn_size", "rnn_layers", "rollout_len")  # each must be at least 1
LSTM_ONLY = (*LSTM_COUNTS, "code_pool", "free_steps", "pose_noise", "noise_observed", "amp_lstm",
             "drnet_checkpoint", "init_lstm")
# What the clips show: a new LSTM run takes these from the DRNET it freezes unless given, so that it learns the
# poses of the clips that DRNET was trained on (a one-digit DRNET under two-digit clips predicts nonsense).
DRNET_DATA_KEYS = ("num_digits",)

# What every numeric flag must be: (test, the words of the error). Every comparison with NaN is False, so NaN
# fails every test; the seed stays within 32 bits because the evaluation multiplies it into stream seeds.
AT_LEAST_1: tuple[Callable[[float], bool], str] = (lambda v: v >= 1, "at least 1")
NOT_NEGATIVE: tuple[Callable[[float], bool], str] = (lambda v: v >= 0, "at least 0")
FINITE_NOT_NEGATIVE: tuple[Callable[[float], bool], str] = (lambda v: 0 <= v < math.inf, "a finite number, at least 0")
VALID_VALUES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: 0 < v < math.inf, "a finite number above 0"),
    "beta1": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "alpha": FINITE_NOT_NEGATIVE, "beta": FINITE_NOT_NEGATIVE,
    **dict.fromkeys(("batch_size", "max_iter", "max_step", "save_iters", "content_dim", "pose_dim", "channels",
                     "num_digits", *LSTM_COUNTS, "start_iter", "eval_steps", "sync_every"), AT_LEAST_1),
    "eval_clips": (lambda v: v >= 2, "at least 2 (the evaluation pairs clips)"),
    "keep_checkpoints": NOT_NEGATIVE, "gpu": NOT_NEGATIVE, "code_pool": NOT_NEGATIVE,
    "free_steps": NOT_NEGATIVE, "pose_noise": FINITE_NOT_NEGATIVE,
    "seed": (lambda v: 0 <= v < 2**32, f"from 0 to {2**32 - 1}"),
    "data_threads": (lambda v: 0 <= v <= MAX_AHEAD, f"from 0 to {MAX_AHEAD}: it counts batches prepared ahead, each "
                                                    "held in memory, and a few already keep pace with training"),
}


def with_dataset(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with --dataset filled in when it was not given (the parser leaves it None so that can be told)."""
    return argparse.Namespace(**{**vars(args), "dataset": args.dataset or DEFAULT_DATASET})


def args_run_dir(args: argparse.Namespace) -> Path:
    """The run directory the flags name: --save_dir or the dataset's default, its lstm/ with --use_lstm True."""
    args = with_dataset(args)
    use_skip = DATASETS[args.dataset]["use_skip"] if args.use_skip is None else args.use_skip
    return run_dir_of(args.save_dir, args.dataset, use_skip, bool(args.use_lstm))


class Resolved(NamedTuple):
    """A stage's resolved configuration, and the checkpoint it starts from, read once here and passed on."""

    config: dict
    checkpoint: dict | None  # DRNET: the one resumed (None for a new run); LSTM: the LSTM one resumed, else the DRNET


def resolve_run(args: argparse.Namespace) -> Resolved:
    """Merge explicit flags, the checkpoint's config when resuming, then (LSTM,) dataset and shared defaults.

    Both stages resolve alike; the LSTM stage's network shapes are its DRNET's, and its run lives in the
    `lstm/` folder of the DRNET run directory (--save_dir or the default). A resumed run continues from its
    own self-contained checkpoint. Nothing is written; `main` holds the run directory (`args_run_dir`) while
    this decides between a new run and a resumed one, so no other run can change that meanwhile.
    """
    check_values(vars(args))
    args = with_dataset(args)
    lstm = bool(args.use_lstm)
    ignored = (*RUN_FLAGS, "drnet_checkpoint", "init_lstm") if lstm else (*RUN_FLAGS, *LSTM_ONLY)
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ignored}
    entry = {k: v for k, v in DATASETS[args.dataset].items() if k != "loader"}
    config = {"dataset": args.dataset, **DEFAULTS, **entry, **(LSTM_DEFAULTS if lstm else {}), **given}
    run_dir = args_run_dir(args)
    train = f"python main.py --dataset {args.dataset}"
    resume_from = None
    if args.resume or args.start_iter:
        what, start_command = ("LSTM checkpoint", f"{train} --use_lstm True") if lstm else ("checkpoint", train)
        resume_from, checkpoint = checkpoint_to_resume(run_dir, args.start_iter, what, start_command)
        check_kind(checkpoint, resume_from, lstm, run_dir)
        config = {**DEFAULTS, **checkpoint["config"], **given}  # flags added since the checkpoint: defaults
        if lstm and args.drnet_checkpoint and (Path(args.drnet_checkpoint).resolve()
                                               != Path(config["drnet_checkpoint"]).resolve()):
            raise DRNetError(f"{resume_from} continues the LSTM of {config['drnet_checkpoint']}; drop "
                             "--drnet_checkpoint or start a new LSTM run")
        if lstm and args.init_lstm:
            raise DRNetError(f"{resume_from} continues its own LSTM: drop --init_lstm, or start a new LSTM run")
        check_architecture(checkpoint, config, resume_from, (*ARCHITECTURE_KEYS, *(LSTM_SHAPE_KEYS if lstm else ())))
    elif checkpoint_path(run_dir).exists():
        held, resume_flags = ("an LSTM run", "--resume True --use_lstm True") if lstm else ("a run", "--resume True")
        raise DRNetError(f"{run_dir} already holds {held}: continue it with {resume_flags}, or choose another "
                         "--save_dir")
    elif lstm and args.init_lstm:
        checkpoint = lstm_to_continue(args, config, given)
    elif lstm:
        checkpoint = drnet_to_freeze(args, config, given, run_dir.parent)
    else:
        checkpoint = None
    config["run_dir"], config["resume_from"] = str(run_dir), str(resume_from) if resume_from else None
    check_config(config, lstm)
    return Resolved(config, checkpoint)


def check_kind(checkpoint: dict, path: Path, lstm: bool, run_dir: Path) -> None:
    """Refuse to resume one stage from the other stage's checkpoint (older DRNET checkpoints have no kind)."""
    if lstm and checkpoint.get("kind") != "lstm":
        raise DRNetError(f"{path} is not an LSTM-stage checkpoint")
    if not lstm and checkpoint.get("kind", "drnet") != "drnet":
        raise DRNetError(f"{path} is the checkpoint of a pose-LSTM run, not of a DRNET run: continue it "
                         f"with --use_lstm True --resume True --save_dir {run_dir.parent}")


def drnet_to_freeze(args: argparse.Namespace, config: dict, given: dict, drnet_dir: Path) -> dict:
    """The trained DRNET a new LSTM run freezes (of a DRNET checkpoint, or the one an LSTM checkpoint or shipped
    pair was trained on), loaded; `config` takes its network shapes, path and (unless given) what its clips show."""
    drnet_path = Path(args.drnet_checkpoint or checkpoint_path(drnet_dir))
    if not drnet_path.is_file():
        save_dir = f" --save_dir {args.save_dir}" if args.save_dir else ""
        raise DRNetError(f"no trained DRNET at {drnet_path}: train one first with `python main.py --dataset "
                         f"{args.dataset}{save_dir}`, or pass --drnet_checkpoint PATH")
    drnet = load_checkpoint(drnet_path)
    if drnet.get("kind") == "lstm":  # an LSTM run or shipped model: a new LSTM on the same frozen DRNET
        drnet = {"kind": "drnet", "config": drnet["drnet_config"], "model": drnet["model"]}
    if drnet.get("kind", "drnet") != "drnet":
        raise DRNetError(f"{drnet_path} is not a DRNET checkpoint (kind {drnet.get('kind')!r})")
    # The dataset and image size the flags ask for must be the DRNET's, and so must any network shape
    # given explicitly; every other shape is taken from the DRNET.
    check_architecture(drnet, config, drnet_path, ("image_width", *(k for k in ARCHITECTURE_KEYS if k in given)))
    stored = architecture_values(drnet["config"])
    config.update({k: stored[k] for k in ARCHITECTURE_KEYS})
    config.update({k: drnet["config"][k] for k in DRNET_DATA_KEYS if k in drnet["config"] and k not in given})
    config["drnet_checkpoint"] = str(drnet_path)
    return drnet


def lstm_to_continue(args: argparse.Namespace, config: dict, given: dict) -> dict:
    """The trained pose LSTM that a new LSTM run starts from (--init_lstm), loaded with the DRNET it was trained
    on, which the run freezes; `config` takes the shapes of both and what its clips show, unless given."""
    if args.drnet_checkpoint:
        raise DRNetError(f"--init_lstm {args.init_lstm} brings the DRNET its LSTM was trained on: drop "
                         "--drnet_checkpoint")
    start = load_checkpoint(args.init_lstm)
    if start.get("kind") != "lstm":
        raise DRNetError(f"--init_lstm {args.init_lstm} holds no pose LSTM: name an LSTM-stage checkpoint or a "
                         "pose_lstm file")
    check_architecture({"config": {**start["drnet_config"], **start["config"]}}, config, Path(args.init_lstm),
                       ("image_width", *(k for k in (*ARCHITECTURE_KEYS, *LSTM_SHAPE_KEYS) if k in given)))
    stored = {**architecture_values(start["drnet_config"]), **start["config"]}
    config.update({k: stored[k] for k in (*ARCHITECTURE_KEYS, *LSTM_SHAPE_KEYS)})
    config.update({k: stored[k] for k in DRNET_DATA_KEYS if k in stored and k not in given})
    config["drnet_checkpoint"] = config["init_lstm"] = args.init_lstm  # the DRNET comes with it (or beside it)
    return start


def check_values(values: dict) -> None:
    """Raise a one-line DRNetError for the first numeric value outside its valid range (None: not given)."""
    for key, value in values.items():
        if key in VALID_VALUES and value is not None:
            valid, what = VALID_VALUES[key]
            if not valid(value):
                raise DRNetError(f"--{key} must be {what}, got {value}")


def check_config(config: dict, lstm: bool = False) -> None:
    """Reject settings that cannot work, each with one clear line, before anything is written."""
    if config["dataset"] not in available():
        raise DRNetError(f"dataset '{config['dataset']}' is not available yet; available: {', '.join(available())}")
    check_values(config)  # again: a resumed run's stored values count as much as the flags
    if config["image_width"] not in SUPPORTED_SIZES:
        raise DRNetError(f"unsupported --image_width {config['image_width']}: the networks are built for "
                         f"{' or '.join(map(str, SUPPORTED_SIZES))} px")
    if config["sampling"] != "independent" and config["dataset"] != "mnist":
        raise DRNetError(f"--sampling {config['sampling']} follows the authors' Moving MNIST code; other datasets "
                         "draw their frames independently within --max_step: drop the flag")
    if config["sampling"] == "lua" and config["max_step"] < 3:
        raise DRNetError(f"--sampling lua needs --max_step of at least 3, got {config['max_step']}")
    if config["cuda_graph"] and config["compile"]:
        raise DRNetError("--cuda_graph True captures the eager step: drop --compile True")
    if config["cuda_graph"] and lstm and not config.get("code_pool"):
        raise DRNetError("--cuda_graph True captures the LSTM update on the clip pool's stored vectors: give "
                         "--code_pool a number of clips, or drop --cuda_graph")
    if config["batch_size"] < 2 and not lstm:  # the LSTM stage has no scene discriminator
        raise DRNetError("--batch_size must be at least 2: the scene discriminator pairs different clips")
    if config["dataset"] != "mnist" and not os.path.isdir(config["data_root"]):  # only MNIST downloads into it
        how = (preparation_commands(config["data_root"], config["image_width"]) if config["dataset"] == "kth"
               else "see docs/datasets.md")
        raise DRNetError(f"--data_root {config['data_root']} is missing: the {config['dataset']} data must be there "
                         f"already; {how}")
    try:
        os.makedirs(config["data_root"], exist_ok=True)
    except OSError as error:
        raise DRNetError(f"cannot create --data_root {config['data_root']}: {error.strerror}") from error


def checkpoint_to_evaluate(args: argparse.Namespace) -> Path:
    """--checkpoint, else the latest checkpoint of the run directory the same flags would train in."""
    if args.checkpoint:
        return Path(args.checkpoint)
    args = with_dataset(args)
    path = checkpoint_path(args_run_dir(args))
    if not path.is_file():
        # The flags that located the run are the ones that train it, so the command to suggest is known.
        train = " ".join(["python main.py --dataset", args.dataset,
                          *(["--use_skip", str(args.use_skip)] if args.use_skip is not None else []),
                          *(["--save_dir", args.save_dir] if args.save_dir else []),
                          *(["--use_lstm True"] if args.use_lstm else [])])
        raise DRNetError(f"no checkpoint at {path} to evaluate: train one with `{train}`, or pass --checkpoint PATH")
    return path


def pick_device(name: str, gpu: int, gpu_given: bool) -> torch.device:
    """The device to run on (`resolve_device`); says so when a --gpu that was given does not apply."""
    device = resolve_device(name, gpu)
    if gpu_given and device.type != "cuda":
        logging.getLogger("drnet").warning("warning: --gpu %d ignored: the run is on %s, not on a CUDA GPU",
                                           gpu, device)
    return device


def pick_precision(mode: str, device: torch.device) -> Precision:
    """bf16 autocast or fp32 for `--amp mode` on `device` (resolve_precision); a DRNetError where bf16 fails."""
    try:
        return resolve_precision(mode, device)
    except ValueError as error:
        raise DRNetError(str(error)) from None


def nothing_left(config: dict, checkpoint: dict | None) -> bool:
    """Whether a resumed run is at --max_iter already, its last test report written: then say so, change nothing.

    Without that report (a run killed between its last checkpoint and its report) the report is what is left:
    the run goes on with --max_iter at the checkpoint's iteration, training nothing.
    """
    if config["resume_from"] is None or checkpoint["iteration"] < config["max_iter"]:
        return False
    iteration, run_dir = checkpoint["iteration"], Path(config["run_dir"])
    if has_report(run_dir, iteration):
        logging.getLogger("drnet").info("%s is at iteration %d (--max_iter %d): nothing left to do, nothing "
                                        "changed; pass a larger --max_iter to train further", run_dir, iteration,
                                        config["max_iter"])
        return True
    config["max_iter"] = iteration
    return False


def check_clip_lengths(config: dict, data: tuple, lstm: bool) -> None:
    """Refuse clips too short for the stage, naming the flags to change, before the run directory is written.

    The DRNET stage's analogy pictures show min(--max_step, ANALOGY_FRAMES) consecutive test frames; the LSTM
    stage trains and tests on --n_past + --n_future. Datasets of endless clips (Moving MNIST) have no limit.
    """
    needed = config["n_past"] + config["n_future"] if lstm else min(config["max_step"], ANALOGY_FRAMES)
    for split, dataset in zip(("train", "test"), data, strict=True):
        longest = getattr(dataset, "longest_clip", None)
        if longest is None or longest >= needed or (split == "train" and not lstm):
            continue
        fix = (f"the --n_past + --n_future = {needed} frames the LSTM stage trains on: lower them" if lstm else
               f"the {needed} consecutive frames the periodic analogy pictures show (min(--max_step, "
               f"{ANALOGY_FRAMES})): lower --max_step to {longest}")
        raise DRNetError(f"the longest {split} clip in {config['data_root']} has {longest} frames, fewer than {fix}, "
                         "or add longer clips")
