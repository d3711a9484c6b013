"""DRNET command line: `python main.py --dataset mnist` trains DRNET; see README.md for every flag.

The same command with `--use_lstm True` then trains the pose LSTM on the trained, frozen DRNET (train_lstm.py).
Flags left unset take the dataset's defaults (datasets.registry.DATASETS), then the shared ones below. A resumed
run starts from the configuration stored in its checkpoint, changed only by the flags given explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import distributed
from board import tensorboard_missing
from datasets.kth import preparation_commands
from datasets.moving_mnist import SAMPLINGS
from datasets.prefetch import MAX_AHEAD
from datasets.registry import DATASETS, available, build_dataset, defaults_table
from flag_sources import OneLineParser, config_tokens
from models import HEAD_DEFAULTS, SUPPORTED_SIZES
from precision import AMP_MODES, Precision, autocast, compile_check, resolve_precision
from runs import (
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
from utils import (
    DRNetError,
    check_writable,
    hold_run_dir,
    remove_stale_temporaries,
    resolve_device,
    setup_logging,
    str2bool,
)

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
                 "rollout_len": 500, "code_pool": 20000}
LSTM_COUNTS = ("n_past", "n_future", "rnn_size", "rnn_layers", "rollout_len")  # each must be at least 1
LSTM_ONLY = (*LSTM_COUNTS, "code_pool", "drnet_checkpoint")
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
    "seed": (lambda v: 0 <= v < 2**32, f"from 0 to {2**32 - 1}"),
    "data_threads": (lambda v: 0 <= v <= MAX_AHEAD, f"from 0 to {MAX_AHEAD}: it counts batches prepared ahead, each "
                                                    "held in memory, and a few already keep pace with training"),
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags; every default is None so that unset flags can be told from set ones."""
    # Raw description and epilog keep the defaults table's columns; each flag's help is still wrapped.
    parser = OneLineParser(prog="main.py", description=__doc__.splitlines()[0], epilog=defaults_table(),
                           formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    boolean = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    what = parser.add_argument_group("what to run")
    what.add_argument("--dataset", choices=list(DATASETS),
                      help=f"dataset; sets the defaults of the other flags, listed per dataset at the end "
                           f"({DEFAULT_DATASET})")
    what.add_argument("--use_skip", **boolean, help="U-Net skips from content encoder to decoder")
    what.add_argument("--use_lstm", **boolean, help="train the pose LSTM on a trained DRNET")
    model = parser.add_argument_group("model (default: the dataset's)")
    model.add_argument("--content_dim", type=int, help="size of the content vector")
    model.add_argument("--pose_dim", type=int, help="size of the pose vector")
    model.add_argument("--image_width", type=int, help=f"frame size in px: {' or '.join(map(str, SUPPORTED_SIZES))}")
    model.add_argument("--channels", type=int, help="colour channels of the frames")
    model.add_argument("--content_affine", **boolean, help="learnable scale and offset in the BatchNorm that ends "
                                                           "the content encoder (the authors' code: True)")
    model.add_argument("--normalize", **boolean, help="put content and pose vectors on the unit sphere, as the "
                                                      "authors' Lua -normalize (False)")
    model.add_argument("--normalize_pose", **boolean, help="put the pose vector alone on the unit sphere, as "
                                                           "drnet-py's --normalize (False)")
    train = parser.add_argument_group("training")
    train.add_argument("--alpha", type=float, help="weight of the similarity loss")
    train.add_argument("--beta", type=float, help="weight of the adversarial loss")
    train.add_argument("--lr", type=float, help=f"Adam learning rate (DRNET {DEFAULTS['lr']}, "
                                                f"LSTM {LSTM_DEFAULTS['lr']})")
    train.add_argument("--beta1", type=float, help=f"Adam beta1 (DRNET {DEFAULTS['beta1']}, "
                                                   f"LSTM {LSTM_DEFAULTS['beta1']})")
    train.add_argument("--batch_size", type=int, help=f"clips per batch ({DEFAULTS['batch_size']})")
    train.add_argument("--max_iter", type=int, help=f"last training iteration ({DEFAULTS['max_iter']})")
    train.add_argument("--max_step", type=int, help=f"largest distance between two frames of a clip "
                                                    f"({DEFAULTS['max_step']})")
    train.add_argument("--num_digits", type=int, help=f"Moving MNIST digits per clip ({DEFAULTS['num_digits']})")
    train.add_argument("--sampling", choices=SAMPLINGS, help="which frames of a Moving MNIST clip make a training "
                                                             "example: independent draws within --max_step; the "
                                                             "Lua code's (content frame 0, target 1 to max_step-2 "
                                                             "frames later; its --max_step is 12); drnet-py's "
                                                             "frames 0-3 (see docs/faithfulness.md; "
                                                             f"{DEFAULTS['sampling']})")
    train.add_argument("--seed", type=int, help=f"random seed of weights and data ({DEFAULTS['seed']})")
    lstm = parser.add_argument_group("LSTM stage (with --use_lstm True)")
    lstm.add_argument("--n_past", type=int, help=f"observed frames before the prediction ({LSTM_DEFAULTS['n_past']})")
    lstm.add_argument("--n_future", type=int, help=f"predicted frames per training clip ({LSTM_DEFAULTS['n_future']})")
    lstm.add_argument("--rnn_size", type=int, help=f"units per LSTM layer ({LSTM_DEFAULTS['rnn_size']})")
    lstm.add_argument("--rnn_layers", type=int, help=f"stacked LSTM layers ({LSTM_DEFAULTS['rnn_layers']})")
    lstm.add_argument("--rollout_len", type=int, help="frames generated for the periodic test rollouts "
                                                      f"({LSTM_DEFAULTS['rollout_len']})")
    lstm.add_argument("--code_pool", type=int, help="training clips encoded once by the frozen DRNET, every batch "
                      f"drawn from their stored vectors; 0: encode every batch ({LSTM_DEFAULTS['code_pool']})")
    lstm.add_argument("--drnet_checkpoint", help="the trained DRNET to freeze (default: checkpoint.pt of the run "
                                                 "directory); the LSTM run goes to <run directory>/lstm")
    run = parser.add_argument_group("files and devices")
    run.add_argument("--data_root", help=f"where datasets live or are downloaded ({DEFAULTS['data_root']})")
    run.add_argument("--config", metavar="PATH", help="repeat a run: every flag from the config.json it wrote "
                                                      "(flags given on the command line win; --save_dir does not "
                                                      "come from the file)")
    run.add_argument("--save_dir", help="run directory (default: runs/<dataset>, runs/<dataset>_skip with skips)")
    run.add_argument("--save_iters", type=int, help=f"checkpoint and pictures every N iterations "
                                                    f"({DEFAULTS['save_iters']})")
    run.add_argument("--keep_checkpoints", type=int, help="periodic checkpoints kept besides the latest; "
                                                          f"0 keeps all ({DEFAULTS['keep_checkpoints']})")
    run.add_argument("--resume", **boolean, help="continue from the latest checkpoint of the run directory")
    run.add_argument("--start_iter", type=int, help="continue from the periodic checkpoint of this iteration")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (auto)")
    run.add_argument("--gpu", type=int, help="CUDA device number (0)")
    run.add_argument("--amp", choices=AMP_MODES, help="bf16 autocast for training and evaluation: auto takes it on "
                                                      "CPUs with AMX or AVX-512 bf16 that pass a start-up check "
                                                      "(fp32 elsewhere; the log says why), off is fp32, bf16 forces "
                                                      f"it wherever it runs ({DEFAULTS['amp']})")
    run.add_argument("--compile", **boolean, help="compile the networks with torch.compile: a slow first iteration, "
                                                  "then faster ones where it helps (see README Speed; "
                                                  f"{DEFAULTS['compile']})")
    run.add_argument("--cuda_graph", **boolean, help="capture the whole DRNET iteration as one CUDA graph and "
                                                     "replay it (CUDA only; see docs/gpu.md; "
                                                     f"{DEFAULTS['cuda_graph']})")
    run.add_argument("--sync_every", type=int, help="read the losses from the device every N iterations; between "
                                                    "reads a GPU runs ahead of Python instead of waiting for it. "
                                                    "metrics.csv still gets every iteration, and every save reads "
                                                    f"them first ({DEFAULTS['sync_every']})")
    run.add_argument("--tensorboard", **boolean, help="also write the metrics, pictures and roll-outs as TensorBoard "
                                                      "event files in <run directory>/tensorboard (needs the "
                                                      "tensorboard package)")
    run.add_argument("--data_threads", type=int, help=f"training batches prepared ahead on a background loader "
                                                      f"thread, at most {MAX_AHEAD} (each waits in memory); 0 draws "
                                                      "each in the training loop. The batches are the same either "
                                                      f"way ({DEFAULTS['data_threads']})")
    evaluation = parser.add_argument_group("evaluation (writes eval/ beside the checkpoint)")
    evaluation.add_argument("--evaluate", **boolean, help="evaluate a trained checkpoint instead of training")
    evaluation.add_argument("--checkpoint", metavar="PATH", help="checkpoint to evaluate (default: the latest "
                                                                 "checkpoint of the run directory these flags name)")
    evaluation.add_argument("--eval_clips", type=int, help="test clips per evaluation part (1000)")
    evaluation.add_argument("--eval_steps", type=int, help="future steps of the LSTM prediction curves (100)")
    evaluation.add_argument("--eval_dir", metavar="DIR", help="where the evaluation goes (eval/ beside the "
                                                              "checkpoint)")
    return parser


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
    ignored = (*RUN_FLAGS, "drnet_checkpoint") if lstm else (*RUN_FLAGS, *LSTM_ONLY)
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
        check_architecture(checkpoint, config, resume_from, (*ARCHITECTURE_KEYS, *(LSTM_SHAPE_KEYS if lstm else ())))
    elif checkpoint_path(run_dir).exists():
        held, resume_flags = ("an LSTM run", "--resume True --use_lstm True") if lstm else ("a run", "--resume True")
        raise DRNetError(f"{run_dir} already holds {held}: continue it with {resume_flags}, or choose another "
                         "--save_dir")
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
    """The trained DRNET a new LSTM run freezes, loaded; `config` takes its network shapes, path and (unless
    given) what its clips show."""
    drnet_path = Path(args.drnet_checkpoint or checkpoint_path(drnet_dir))
    if not drnet_path.is_file():
        save_dir = f" --save_dir {args.save_dir}" if args.save_dir else ""
        raise DRNetError(f"no trained DRNET at {drnet_path}: train one first with `python main.py --dataset "
                         f"{args.dataset}{save_dir}`, or pass --drnet_checkpoint PATH")
    drnet = load_checkpoint(drnet_path)
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
    if config["cuda_graph"] and (lstm or config["compile"]):
        raise DRNetError("--cuda_graph True captures the eager DRNET step only: drop "
                         + ("it for the LSTM stage" if lstm else "--compile True"))
    if config["batch_size"] < 2 and not lstm:  # the LSTM stage has no scene discriminator
        raise DRNetError("--batch_size must be at least 2: the scene discriminator pairs different clips")
    if config["dataset"] != "mnist" and not os.path.isdir(config["data_root"]):  # only MNIST downloads into it
        how = (preparation_commands(config["data_root"], config["image_width"]) if config["dataset"] == "kth"
               else "see README, Datasets")
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


def run_evaluation(args: argparse.Namespace) -> None:
    """`--evaluate`: metrics of a checkpoint, with its stored config changed only by data and size flags.

    The run directory's refusal to train over an existing run (resolve_run) does not apply: evaluation
    reads a run and writes only into its eval/ folder. A --dataset that is not the checkpoint's is an error.
    """
    from evaluate import DATA_OVERRIDES, evaluate

    check_values(vars(args))
    overrides = {k: v for k, v in vars(args).items() if k in (*DATA_OVERRIDES, "eval_clips", "eval_steps")}
    path = checkpoint_to_evaluate(args)
    checkpoint = load_checkpoint(path)  # read once: evaluation rebuilds the model from it
    if args.dataset is not None:
        stored = checkpoint["config"]["dataset"]
        if stored != args.dataset:
            raise DRNetError(f"{path} is a {stored} checkpoint, not {args.dataset}: evaluation uses the checkpoint's "
                             "dataset, so drop --dataset or name another --checkpoint")
    device = pick_device(args.device or DEFAULTS["device"], DEFAULTS["gpu"] if args.gpu is None else args.gpu,
                         args.gpu is not None)
    precision = pick_precision(args.amp or DEFAULTS["amp"], device)
    logging.getLogger("drnet").info("precision %s: %s", precision.name, precision.reason)
    # Tried before the minutes the evaluation takes, not after them.
    check_writable(Path(args.eval_dir) if args.eval_dir else path.parent / "eval", "the evaluation")
    with autocast(precision, device):
        evaluate(path, overrides, device, checkpoint, args.eval_dir)


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
    from train_drnet import ANALOGY_FRAMES

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


def parse_flags(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; with --config, the flags a run's config.json stores, then those of the command line over them."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    flags = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    try:
        tokens = config_tokens(args.config, flags, RUN_FLAGS, DATASETS, DEFAULTS["gpu"])
    except ValueError as error:
        parser.error(f"--config {args.config}: {error}")
    parser.prog = f"main.py --config {args.config}"  # a bad value in the file is reported as the file's
    parser.parse_args(tokens)
    parser.prog = "main.py"
    return parser.parse_args([*tokens, *argv])


def main(argv: list[str] | None = None) -> None:
    """Parse flags, check configuration, device and data, then hold the run directory and run the stage.

    The run directory is held (rank 0: `hold_run_dir`) from before anything looks at it until the run ends;
    nothing is written in it before every check has passed (only --data_root is created, for the data), and a
    new one is removed again when a check fails. Started by torchrun, every process trains on its share of
    each batch (distributed.py) and rank 0 alone writes.
    """
    args = parse_flags(argv)
    log = setup_logging()
    held = contextlib.ExitStack()  # the hold on the run directory, released when main ends
    try:
        if args.evaluate:
            if distributed.launched():
                raise DRNetError("--evaluate runs in one process: start it with python, not torchrun")
            run_evaluation(args)
            return
        check_values(vars(args))  # a bad value creates no run directory
        if os.environ.get("RANK", "0") == "0":  # torchrun's rank 0 (the process group is not joined yet)
            held.enter_context(hold_run_dir(args_run_dir(args)))
        config, checkpoint = resolve_run(args)
        if nothing_left(config, checkpoint):
            return
        # Under torchrun each process takes the GPU of its local rank, whatever --gpu says.
        gpu = distributed.local_rank() if distributed.launched() else config["gpu"]
        device = pick_device(config["device"], gpu, args.gpu is not None)
        distributed.start(device)
        if not distributed.is_main():
            log.setLevel(logging.ERROR)  # rank 0 reports; the others say only what stops them
        per_rank = distributed.per_rank_batch(config["batch_size"], 1 if args.use_lstm else 2)
        precision = pick_precision(config["amp"], device)
        if config["cuda_graph"] and (device.type != "cuda" or distributed.launched()):
            raise DRNetError(f"--cuda_graph True needs one CUDA GPU in one process; this run is on {device}"
                             + (" under torchrun" if distributed.launched() else "") + ": drop the flag")
        if config["compile"] and (failure := compile_check()):
            raise DRNetError(f"--compile True: torch.compile does not work here ({failure}); drop the flag")
        if config["tensorboard"] and tensorboard_missing():
            raise DRNetError(tensorboard_missing())
        with distributed.main_rank_first():  # one process downloads or caches the data, the others read it
            data = build_dataset(config, "train"), build_dataset(config, "test")
        check_clip_lengths(config, data, bool(args.use_lstm))
        run_dir = Path(config["run_dir"])
        if distributed.is_main():
            log = setup_logging(run_dir)
            for stale in remove_stale_temporaries(run_dir):
                log.info("removed %s, left half-written by a run that was stopped while writing it", stale)
        log.info("run directory %s on %s; config: %s", run_dir, device, json.dumps(config))
        if distributed.world_size() > 1:
            log.info("rank %d of %d, %d clips per rank, global batch %d (logged losses: means over ranks)",
                     distributed.rank(), distributed.world_size(), per_rank, config["batch_size"])
        log.info("precision %s: %s", precision.name, precision.reason)
        if args.use_lstm:
            from train_lstm import train_lstm

            train_lstm(config, device, data, checkpoint, precision)
        else:
            from train_drnet import train_drnet

            train_drnet(config, device, data, checkpoint, precision)
    except DRNetError as error:
        log.error("error: %s", error)
        sys.exit(2)
    except OSError as error:  # the file system refused a write; checkpoints report it themselves
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("error: no space left on the device writing %s; free some space and run the command again "
                      "(a training run continues with --resume True)", error.filename or "a file")
        else:  # a read-only or vanished folder, a name too long: the file and the reason are the whole story
            log.error("error: %s: %s", error.filename or "a file", error.strerror or error)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while starting, or a second one during a save
        log.error("error: stopped by Ctrl-C; checkpoints are written whole or not at all, so the last one written "
                  "is intact (a training run continues from it with --resume True)")
        sys.exit(130)
    finally:  # close the run's log file too, so in-process runs (tests) leave no open file behind
        held.close()
        distributed.stop()
        drnet_log = logging.getLogger("drnet")
        for handler in list(drnet_log.handlers):
            drnet_log.removeHandler(handler)
            handler.close()


if __name__ == "__main__":
    main()
