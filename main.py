"""DRNET command line: `python main.py --dataset mnist` trains DRNET; `python main.py --help` lists every flag.

The same command with `--use_lstm True` then trains the pose LSTM on the trained, frozen DRNET, and with
`--evaluate True` scores a trained checkpoint. This file holds the flags and the order of the start-up checks;
what the flags resolve to is the configuration policy of the engine package.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path

import torch

from datasets.moving_mnist import SAMPLINGS
from datasets.prefetch import MAX_AHEAD
from datasets.registry import DATASETS, build_dataset, defaults_table
from engine import distributed
from engine.board import tensorboard_missing
from engine.checkpoints import load_checkpoint
from engine.config import (
    DEFAULT_DATASET,
    DEFAULTS,
    LSTM_DEFAULTS,
    RUN_FLAGS,
    args_run_dir,
    check_clip_lengths,
    check_values,
    checkpoint_to_evaluate,
    nothing_left,
    pick_device,
    pick_precision,
    resolve_run,
)
from engine.flags import OneLineParser, config_tokens
from engine.precision import AMP_MODES, autocast, compile_check
from models import SUPPORTED_SIZES
from utils import (
    USER_ERROR,
    DRNetError,
    check_writable,
    hold_run_dir,
    remove_stale_temporaries,
    setup_logging,
    str2bool,
)


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
    lstm.add_argument("--free_steps", type=int, help="train on its own predictions as it generates: after the "
                      "--n_past observed poses the LSTM reads back its predictions N steps at a time, each run "
                      "followed by one true pose; N >= --n_future reads back all of them (not in the paper nor "
                      f"the authors' code, which teacher-force: 0; see docs/lstm.md) ({LSTM_DEFAULTS['free_steps']})")
    lstm.add_argument("--pose_noise", type=float, help="add Gaussian noise of this standard deviation to the poses "
                      "the LSTM reads in training, the targets unchanged, so that it learns to bring a pose that left "
                      "its track back (not in the paper nor the authors' code: 0; see docs/lstm.md) "
                      f"({LSTM_DEFAULTS['pose_noise']})")
    lstm.add_argument("--noise_observed", **boolean, help="with --pose_noise: False keeps the first --n_past poses "
                      "read clean, as a roll-out reads the observed poses, and adds noise only to the poses after "
                      f"them ({LSTM_DEFAULTS['noise_observed']})")
    lstm.add_argument("--amp_lstm", **boolean, help="train the LSTM itself under --amp's bf16 autocast too, not "
                      "only the frozen DRNET's encoding; test roll-outs stay fp32 (see docs/lstm.md) "
                      f"({LSTM_DEFAULTS['amp_lstm']})")
    lstm.add_argument("--init_lstm", metavar="PATH", help="start from this trained pose LSTM (an LSTM checkpoint or a "
                      "pose_lstm file) and freeze the DRNET it was trained on, with a fresh optimizer")
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
                                                  "then faster ones where it helps (see docs/speed.md; "
                                                  f"{DEFAULTS['compile']})")
    run.add_argument("--cuda_graph", **boolean, help="capture the whole DRNET iteration, or the LSTM update once "
                                                     "its clip pool is full, as one CUDA graph and replay it (CUDA "
                                                     f"only; see docs/gpu.md; {DEFAULTS['cuda_graph']})")
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


def run_evaluation(args: argparse.Namespace) -> None:
    """`--evaluate`: metrics of a checkpoint, with its stored config changed only by data and size flags.

    The run directory's refusal to train over an existing run (resolve_run) does not apply: evaluation
    reads a run and writes only into its eval/ folder. A --dataset that is not the checkpoint's is an error.
    """
    from evaluation.evaluate import DATA_OVERRIDES, evaluate

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


def check_cuda_graph(config: dict, device: torch.device) -> None:
    """Refuse `--cuda_graph True` where it cannot record: on anything but one CUDA GPU in one process."""
    if config["cuda_graph"] and (device.type != "cuda" or distributed.launched()):
        raise DRNetError(f"--cuda_graph True needs one CUDA GPU in one process; this run is on {device}"
                         + (" under torchrun" if distributed.launched() else "") + ": drop the flag")


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
        check_cuda_graph(config, device)
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
        sys.exit(USER_ERROR)
    except OSError as error:  # the file system refused a write; checkpoints report it themselves
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("error: no space left on the device writing %s; free some space and run the command again "
                      "(a training run continues with --resume True)", error.filename or "a file")
        else:  # a read-only or vanished folder, a name too long: the file and the reason are the whole story
            log.error("error: %s: %s", error.filename or "a file", error.strerror or error)
        sys.exit(USER_ERROR)
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
