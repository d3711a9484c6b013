"""engine/flags.py and the parser of main.py: boolean flags, errors in one line, the authors' flag names (each
gets ours in the error, docs/authors_flags.md maps them all), and `--config run/config.json`, which repeats a run.

The refusals run main.main (marked e2e); parsing alone does not."""

import argparse
import json
import re
from pathlib import Path

import pytest

import main
from engine.checkpoints import prepare_run_dir
from engine.config import DEFAULTS, LSTM_DEFAULTS, resolve_run
from engine.flags import FLAGS
from utils import str2bool

REPO = Path(__file__).resolve().parent.parent
OURS = {option for action in main.build_parser()._actions for option in action.option_strings}


def test_boolean_flags_parse_honestly():
    parse = main.build_parser().parse_args
    assert parse(["--use_skip", "False"]).use_skip is False
    assert parse(["--use_skip", "True"]).use_skip is True
    assert parse(["--use_skip"]).use_skip is True  # bare flag
    assert parse(["--use_skip", "0"]).use_skip is False
    assert parse([]).use_skip is None  # unset: the dataset's default applies
    assert parse(["--use_lstm", "True"]).use_lstm is True
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


@pytest.mark.e2e
def test_a_bad_boolean_is_one_line(fails_with_one_line):
    fails_with_one_line(["--use_skip", "maybe"], "expected a boolean", alone=True)


@pytest.mark.e2e
def test_an_unknown_dataset_is_one_line(fails_with_one_line):
    fails_with_one_line(["--dataset", "cifar"], "invalid choice: 'cifar'", alone=True)


@pytest.mark.e2e
@pytest.mark.parametrize("argv, expected", [
    (["--sd_weight", "0.1"], "--sd_weight is drnet-py's name: use --beta"),
    (["--niter", "5", "--epoch_size", "600"], "--niter is drnet-py's name: use --max_iter, the total number of "
                                              "iterations (drnet-py trains niter x epoch_size)"),
    (["--dataset", "moving_mnist"], "--dataset moving_mnist is drnet-py's and the Lua code's name: use --dataset "
                                    "mnist"),
    (["--dataset=moving_mnist"], "use --dataset mnist"),
    (["--data", "moving_mnist"], "--data moving_mnist is drnet-py's and the Lua code's name: use --dataset mnist"),
    (["--model_path", "logs/x", "--use_lstm", "True"], "--model_path is drnet-py's name: use --drnet_checkpoint"),
    (["--log_dir=logs"], "--log_dir is drnet-py's name: use --save_dir"),
    (["--content_model", "dcgan_unet"], "--content_model is drnet-py's name: use --use_skip True for dcgan_unet"),
    (["-b", "32"], "-b is the Lua code's name: use --batch_size"),
    (["--learningRate", "0.002"], "--learningRate is the Lua code's name: use --lr"),
    (["--save", "logs/"], "--save is the Lua code's name: use --save_dir"),  # argparse: ambiguous prefix
])
def test_the_authors_flag_names_get_ours_in_one_line(fails_with_one_line, argv, expected):
    line = fails_with_one_line(argv, alone=True)
    assert line.startswith("main.py: error: ") and expected in line and "docs/authors_flags.md" in line


@pytest.mark.e2e
def test_our_own_flags_and_mistypes_of_them_are_not_hinted(fails_with_one_line):
    line = fails_with_one_line(["--betta", "1"], alone=True)
    assert "unrecognized arguments: --betta 1" in line and "name:" not in line
    assert main.parse_flags(["--normalize", "--data_root", "d"]).normalize is True  # a name both codes use


def test_every_authors_flag_is_in_the_docs_table_and_every_hint_names_our_flags():
    theirs, ours = set(), set()
    for line in (REPO / "docs" / "authors_flags.md").read_text().splitlines():
        cells = line.split("|")
        if line.startswith("| `-"):  # | their flags | whose | our flags | notes |
            theirs |= set(re.findall(r"`(-[^`= ]+)", cells[1]))
            ours |= set(re.findall(r"`(--[a-z_]+)", cells[3]))
    assert set(FLAGS) <= theirs and ours <= OURS, ours - OURS
    for flag, (_, hint) in FLAGS.items():
        named = set(re.findall(r"--[a-z_]+", hint))
        assert flag not in OURS and named <= OURS, (flag, named - OURS)


def written_config(tmp_path: Path, *flags: str) -> Path:
    """The config.json a new run of these flags writes, without training it."""
    config = resolve_run(main.parse_flags(list(flags))).config
    return prepare_run_dir(config) / "config.json"


def test_config_repeats_a_run_with_the_command_line_winning(tmp_path):
    path = written_config(tmp_path, "--save_dir", str(tmp_path / "a"), "--data_root", str(tmp_path / "data"),
                          "--lr", "0.001", "--pose_dim", "7", "--use_skip", "True", "--batch_size", "6")
    original = json.loads(path.read_text())
    repeat = resolve_run(main.parse_flags(["--config", str(path), "--save_dir", str(tmp_path / "b"),
                                                "--batch_size", "8"])).config
    assert repeat == {**original, "run_dir": str(tmp_path / "b"), "batch_size": 8}
    assert (repeat["lr"], repeat["pose_dim"], repeat["use_skip"]) == (0.001, 7, True)


def test_config_of_an_lstm_run_repeats_the_lstm_stage(tmp_path):
    data = ["--data_root", str(tmp_path / "data")]
    lstm = {"dataset": "mnist", **DEFAULTS, **LSTM_DEFAULTS, "drnet_checkpoint": "runs/x/checkpoint.pt",
            **{k: v for k, v in main.DATASETS["mnist"].items() if k != "loader"}, "data_root": data[1]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(lstm))
    args = main.parse_flags(["--config", str(path), "--rnn_size", "32"])
    assert (args.use_lstm, args.drnet_checkpoint, args.rnn_size, args.n_past) == (True, "runs/x/checkpoint.pt", 32, 10)
    assert args.gpu is None  # the default --gpu 0 is not given: it would warn on a CPU


@pytest.mark.e2e
@pytest.mark.parametrize("content, expected", [
    ({"lr": 0.1, "learning_rate": 1}, "unknown keys learning_rate (not flags of main.py)"),
    ({"dataset": "mnist", "content_encoder": "vgg16"}, "content_encoder vgg16: not what --dataset mnist builds now"),
    ({"dataset": "moving_mnist"}, "main.py --config "),
    ([1, 2], "not a run's config.json"),
    (None, "cannot read it as a run's config.json"),
])
def test_a_config_that_cannot_be_repeated_is_one_line(tmp_path, fails_with_one_line, content, expected):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(json.dumps(content))
    line = fails_with_one_line(["--config", str(path)], alone=True)
    assert expected in line and str(path) in line

