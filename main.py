"""DRNET command line: `python main.py --dataset mnist` trains DRNET; see README.md for every flag.

Flags left unset take the dataset's defaults (datasets.DATASETS), then the shared ones below. A resumed
run starts from the configuration stored in its checkpoint, changed only by the flags given explicitly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from datasets import DATASETS, available
from models import SUPPORTED_SIZES
from utils import DRNetError, resolve_device, setup_logging, str2bool

# Shared defaults [py, seed]; per-dataset ones (sizes, architectures, dims, alpha, beta) live in DATASETS.
DEFAULTS = {"lr": 0.002, "beta1": 0.5, "batch_size": 100, "max_iter": 50000, "max_step": 20,
            "save_iters": 500, "seed": 1, "data_root": "data", "num_digits": 2, "keep_checkpoints": 5,
            "data_threads": 0, "device": "auto", "gpu": 0}
# Flags that choose what to do or where, never stored as part of the model's configuration.
RUN_FLAGS = ("resume", "start_iter", "save_dir", "use_lstm")


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (the usage text is what --help is for)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags; every default is None so that unset flags can be told from set ones."""
    parser = OneLineParser(prog="main.py", description=__doc__.splitlines()[0],
                           argument_default=None, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    boolean = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    what = parser.add_argument_group("what to run")
    what.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="dataset (sets the defaults)")
    what.add_argument("--use_skip", **boolean, help="U-Net skips from content encoder to decoder")
    what.add_argument("--use_lstm", **boolean, help="train the pose LSTM on a trained DRNET")
    model = parser.add_argument_group("model (default: the dataset's)")
    model.add_argument("--content_dim", type=int, help="size of the content vector")
    model.add_argument("--pose_dim", type=int, help="size of the pose vector")
    model.add_argument("--image_width", type=int, help=f"frame size in px: {' or '.join(map(str, SUPPORTED_SIZES))}")
    model.add_argument("--channels", type=int, help="colour channels of the frames")
    train = parser.add_argument_group("training")
    train.add_argument("--alpha", type=float, help="weight of the similarity loss")
    train.add_argument("--beta", type=float, help="weight of the adversarial loss")
    train.add_argument("--lr", type=float, help=f"Adam learning rate (DRNET {DEFAULTS['lr']})")
    train.add_argument("--beta1", type=float, help=f"Adam beta1 ({DEFAULTS['beta1']})")
    train.add_argument("--batch_size", type=int, help=f"clips per batch ({DEFAULTS['batch_size']})")
    train.add_argument("--max_iter", type=int, help=f"last training iteration ({DEFAULTS['max_iter']})")
    train.add_argument("--max_step", type=int, help=f"largest distance between two frames of a clip "
                                                    f"({DEFAULTS['max_step']})")
    train.add_argument("--num_digits", type=int, help=f"Moving MNIST digits per clip ({DEFAULTS['num_digits']})")
    train.add_argument("--seed", type=int, help=f"random seed of weights and data ({DEFAULTS['seed']})")
    run = parser.add_argument_group("files and devices")
    run.add_argument("--data_root", help=f"where datasets live or are downloaded ({DEFAULTS['data_root']})")
    run.add_argument("--save_dir", help="run directory (default: runs/<dataset>, runs/<dataset>_skip with skips)")
    run.add_argument("--save_iters", type=int, help=f"checkpoint and pictures every N iterations "
                                                    f"({DEFAULTS['save_iters']})")
    run.add_argument("--keep_checkpoints", type=int, help="periodic checkpoints kept besides the latest; "
                                                          f"0 keeps all ({DEFAULTS['keep_checkpoints']})")
    run.add_argument("--resume", **boolean, help="continue from the latest checkpoint of the run directory")
    run.add_argument("--start_iter", type=int, help="continue from the periodic checkpoint of this iteration")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (auto)")
    run.add_argument("--gpu", type=int, help="CUDA device number (0)")
    run.add_argument("--data_threads", type=int, help="loader worker processes for file datasets (KTH, SUNCG, "
                                                      "NORB); Moving MNIST is generated in the training process")
    return parser


def default_run_dir(config: dict) -> Path:
    """runs/<dataset>, with a _skip suffix when skip connections are on."""
    return Path("runs") / (config["dataset"] + ("_skip" if config["use_skip"] else ""))


def resolve_config(args: argparse.Namespace) -> dict:
    """Merge explicit flags, the checkpoint's config when resuming, dataset defaults and shared defaults."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    entry = {k: v for k, v in DATASETS[args.dataset].items() if k != "loader"}
    config = {"dataset": args.dataset, **DEFAULTS, **entry, **given}
    for flag in RUN_FLAGS:
        config.pop(flag, None)
    run_dir = Path(given.get("save_dir") or default_run_dir(config))
    resume_from = None
    if args.resume or args.start_iter:
        from train import checkpoint_path, load_checkpoint

        resume_from = checkpoint_path(run_dir, args.start_iter or None)
        if not resume_from.is_file():
            raise DRNetError(f"nothing to resume: no checkpoint {resume_from}; start a run with "
                             f"`python main.py --dataset {args.dataset}` (or pass its --save_dir)")
        stored = load_checkpoint(resume_from)["config"]
        config = {**stored, **{k: v for k, v in given.items() if k not in RUN_FLAGS}}
    elif (run_dir / "checkpoint.pt").exists() and not args.use_lstm:
        raise DRNetError(f"{run_dir} already holds a run: continue it with --resume True, or choose another "
                         "--save_dir")
    config["run_dir"], config["resume_from"] = str(run_dir), str(resume_from) if resume_from else None
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Reject settings that cannot work, each with one clear line, before anything is written."""
    if config["dataset"] not in available():
        raise DRNetError(f"dataset '{config['dataset']}' is not available yet; available: {', '.join(available())}")
    if config["image_width"] not in SUPPORTED_SIZES:
        raise DRNetError(f"unsupported --image_width {config['image_width']}: the networks are built for "
                         f"{' or '.join(map(str, SUPPORTED_SIZES))} px")
    for key in ("batch_size", "max_iter", "max_step", "save_iters", "content_dim", "pose_dim", "channels"):
        if config[key] < 1:
            raise DRNetError(f"--{key} must be at least 1, got {config[key]}")
    if config["batch_size"] < 2:
        raise DRNetError("--batch_size must be at least 2: the scene discriminator pairs different clips")
    try:
        os.makedirs(config["data_root"], exist_ok=True)
    except OSError as error:
        raise DRNetError(f"cannot create --data_root {config['data_root']}: {error.strerror}") from error
    try:
        os.makedirs(config["run_dir"], exist_ok=True)
    except OSError as error:
        raise DRNetError(f"cannot create the run directory {config['run_dir']}: {error.strerror}") from error


def main(argv: list[str] | None = None) -> None:
    """Parse flags, resolve the configuration and device once, and run the asked-for stage."""
    args = build_parser().parse_args(argv)
    log = setup_logging()
    try:
        config = resolve_config(args)
        if args.use_lstm:
            raise DRNetError("the LSTM stage (--use_lstm True) is not available yet")
        device = resolve_device(config["device"], config["gpu"])
        log = setup_logging(Path(config["run_dir"]))
        log.info("run directory %s on %s; config: %s", config["run_dir"], device, json.dumps(config))
        from train import train_drnet

        train_drnet(config, device)
    except DRNetError as error:
        log.error("error: %s", error)
        sys.exit(2)
    finally:
        logging.getLogger("drnet").handlers.clear()


if __name__ == "__main__":
    main()
