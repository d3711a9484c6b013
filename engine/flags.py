"""Flags from elsewhere than our command line: the authors' names for them, and a run's config.json (--config);
and the command-line parser whose errors are one line.

The parser names our flag when one of the authors' is given (docs/authors_flags.md has the table). Their names are
read from the option lists of drnet-py (train_drnet.py, train_lstm.py) and of the Lua code (train_drnet.lua,
train_drnet_skip.lua, train_lstm.lua). Names that are also ours (--lr, --beta1, --batch_size, --seed, --data_root,
--content_dim, --pose_dim, --image_width, --channels, --max_step, --n_past, --n_future, --rnn_size, --rnn_layers,
--data_threads, --normalize, --gpu, --dataset) are accepted as ours; docs/authors_flags.md says where their
meanings differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from utils import USER_ERROR

PY, LUA, BOTH = "drnet-py's", "the Lua code's", "drnet-py's and the Lua code's"
MAX_ITER_PY = "use --max_iter, the total number of iterations (drnet-py trains niter x epoch_size)"
MAX_ITER_LUA = "use --max_iter, the total number of iterations (the Lua code trains nEpochs x epochSize / batchSize)"
FOLLOWS_DATASET = "the networks follow --dataset (the table at the end of --help); --use_skip True adds the skips"
REPORTS = "use --save_iters (pictures, test metrics, checkpoints) and --sync_every (how often losses are read)"

# Flag -> (whose name it is, what to use here).
FLAGS: dict[str, tuple[str, str]] = {
    # drnet-py
    "--sd_weight": (PY, "use --beta"),
    "--niter": (PY, MAX_ITER_PY),
    "--epoch_size": (PY, MAX_ITER_PY),
    "--log_dir": (PY, "use --save_dir, the run directory itself (default runs/<dataset>)"),
    "--content_model": (PY, "use --use_skip True for dcgan_unet or vgg_unet, --use_skip False for dcgan; the "
                            "encoders follow --dataset"),
    "--pose_model": (PY, FOLLOWS_DATASET),
    "--sd_nf": (PY, "the scene discriminator always has 100 hidden units, drnet-py's default; drop it"),
    "--data_type": (PY, "each stage draws the batches it needs; drop it"),
    "--model_path": (PY, "use --drnet_checkpoint PATH/checkpoint.pt with --use_lstm True (by default the LSTM "
                         "freezes the DRNET of --save_dir)"),
    "--data": (PY, "use --dataset"),
    "--optimizer": (BOTH, "training always uses Adam, both codes' default; drop it"),
    # the Lua code
    "--learningRate": (LUA, "use --lr"),
    "--batchSize": (LUA, "use --batch_size"),
    "-b": (LUA, "use --batch_size"),
    "-g": (LUA, "use --gpu"),
    "--save": (LUA, "use --save_dir"),
    "--name": (LUA, "use --save_dir, the run directory itself"),
    "--dataRoot": (LUA, "use --data_root"),
    "--nEpochs": (LUA, MAX_ITER_LUA),
    "--epochSize": (LUA, MAX_ITER_LUA),
    "--contentDim": (LUA, "use --content_dim"),
    "--poseDim": (LUA, "use --pose_dim"),
    "--imageSize": (LUA, "use --image_width"),
    "--movingDigits": (LUA, "use --num_digits"),
    "--cropSize": (LUA, "it crops KITTI frames, a dataset not trained here; drop it"),
    "--maxStep": (LUA, "use --max_step"),
    "--nShare": (LUA, "the content comes from one frame, its default; drop it"),
    "--advWeight": (LUA, "use --beta"),
    "--model": (LUA, FOLLOWS_DATASET),
    "--decoder": (LUA, FOLLOWS_DATASET),
    "--unet": (LUA, "use --use_skip True"),
    "--depth": (LUA, FOLLOWS_DATASET),
    "--nThreads": (LUA, "use --data_threads (batches prepared ahead on a background thread)"),
    "--dataPool": (LUA, "the loaders keep no pool of clips; drop it"),
    "--dataWarmup": (LUA, "the loaders keep no pool of clips; drop it"),
    "--rnnSize": (LUA, "use --rnn_size"),
    "--rnnLayers": (LUA, "use --rnn_layers"),
    "--modelPath": (LUA, "use --drnet_checkpoint PATH/checkpoint.pt with --use_lstm True"),
    "--nPast": (LUA, "use --n_past"),
    "--nFuture": (LUA, "use --n_future"),
    "--printEvery": (LUA, REPORTS),
    "--plotEvery": (LUA, REPORTS),
    "--testEvery": (LUA, REPORTS),
}
# Their dataset names that are not ours.
DATASET_NAMES = {"moving_mnist": "mnist"}


def authors_flag_hint(argv: list[str], ours: set[str]) -> str:
    """What to use instead of the first of the authors' flags (or dataset names) in `argv`; "" when there is none.

    `ours` are our option strings: a name both codes use is ours, never hinted.
    """
    for i, token in enumerate(argv):
        name, equals, value = token.partition("=")
        if name in ("--dataset", "--data"):
            value = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
            if value in DATASET_NAMES:
                return f"{name} {value} is {BOTH} name: use --dataset {DATASET_NAMES[value]}"
        if name in FLAGS and name not in ours:
            whose, instead = FLAGS[name]
            return f"{name} is {whose} name: {instead}"
    return ""


# Keys of config.json that no flag sets: where the run went, and the networks its --dataset chose.
CONFIG_ONLY = ("run_dir", "resume_from", "content_encoder", "pose_encoder", "decoder")


def config_tokens(path: str, flags: dict[str, str], not_stored: tuple[str, ...], datasets: dict,
                  default_gpu: int) -> list[str]:
    """The command-line tokens that repeat the run whose config.json is `path`; ValueError says why they cannot.

    `flags` maps each config key to its flag, `not_stored` are the flags that choose what to do or where (never
    taken from the file), `datasets` the registry whose networks the file's must still be.
    """
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read it as a run's config.json ({error})") from error
    if not isinstance(stored, dict):
        raise ValueError("not a run's config.json (no JSON object)")
    unknown = sorted(set(stored) - set(flags) - set(CONFIG_ONLY))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)} (not flags of main.py)")
    entry = datasets.get(stored.get("dataset"), {})
    changed = [key for key in CONFIG_ONLY[2:] if key in stored and stored[key] != entry.get(key)]
    if changed:
        raise ValueError(f"{', '.join(f'{key} {stored[key]}' for key in changed)}: not what --dataset "
                         f"{stored.get('dataset')} builds now, and no flag sets it")
    # A new LSTM run stores the DRNET it froze; --gpu 0 (the default) is left out, as it would warn on a CPU.
    tokens = ["--use_lstm", "True"] if "drnet_checkpoint" in stored else []
    for key, value in stored.items():
        if key not in (*CONFIG_ONLY, *not_stored) and value is not None and (key, value) != ("gpu", default_gpu):
            tokens += [flags[key], str(value)]
    return tokens


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (the usage text is what --help is for), naming our flag for one
    of the authors' (`authors_flag_hint`)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's parsing, after looking for the authors' flag names."""
        args = sys.argv[1:] if args is None else list(args)
        hint = authors_flag_hint(args, set(self._option_string_actions))
        if hint:
            self.error(f"{hint} (docs/authors_flags.md maps the authors' flags to ours)")
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:
        self.exit(USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")
