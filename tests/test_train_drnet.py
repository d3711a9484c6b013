"""train_drnet.py, the DRNET stage's training step beyond its losses (tests/test_losses.py): the discriminator's
pairs as indices, the captured step (--cuda_graph True) as far as a CPU can check it (its static copies and
warm-up leave training as eager), and, slow, torch.compile's step against eager and a run that learns."""

import csv

import pytest
import torch

from datasets.moving_mnist import moving_mnist
from datasets.registry import DATASETS
from engine import precision
from main import main
from models import DRNet, discriminator_pairs
from train_drnet import captured_step, make_optimizers, pair_indices, train_step

CPU = torch.device("cpu")
CONFIG = {**DATASETS["mnist"], "lr": 0.002, "beta1": 0.5, "seed": 1}


def test_pair_indices_are_the_pairs_discriminator_pairs_draws():
    h_p1, h_p2 = torch.randn(7, 5), torch.randn(7, 5)
    first, second, labels = discriminator_pairs(h_p1, h_p2, torch.Generator().manual_seed(3))
    partner, index_labels = pair_indices(7, torch.Generator().manual_seed(3), CPU)
    assert torch.equal(first, h_p1) and torch.equal(second, h_p2[partner]) and torch.equal(labels, index_labels)
    assert partner.tolist()[:3] == [0, 1, 2] and all(partner[i] != i for i in range(3, 7))


def fresh_model() -> tuple[DRNet, dict]:
    torch.manual_seed(0)
    model = DRNet(CONFIG).train()
    return model, make_optimizers(model, CONFIG)


def batches(count: int, size: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [torch.rand(4, size, 3, 64, 64, generator=generator) for _ in range(count)]


class FakeClips:
    """A training split whose batches are random frames, as captured_step draws its warm-up batch."""

    def drnet_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(4, batch_size, 3, 64, 64, generator=generator)


def test_the_static_step_after_its_warm_up_trains_exactly_as_the_eager_step():
    """Warm-up steps change weights, moments and BatchNorm statistics; capture puts them back, so the first
    replayed iteration starts where an eager run starts, and the pairs come from the same global generator."""
    eager, eager_optimizers = fresh_model()
    static, static_optimizers = fresh_model()
    step = captured_step(static, static_optimizers, CONFIG, FakeClips(), 4, precision.FP32, CPU, capture=False)
    torch.manual_seed(11)
    expected = [train_step(eager, eager_optimizers, frames, 1.0, 0.0001, torch.default_generator)
                for frames in batches(3)]
    torch.manual_seed(11)
    got = [step(frames) for frames in batches(3)]
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        assert all(torch.equal(want[name], have[name]) for name in want)
    for (name, a), b in zip(eager.state_dict().items(), static.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    adam_state = static_optimizers["main"].state[next(static.content_encoder.parameters())]
    assert adam_state["step"].item() == 3  # the warm-up's steps were taken back


@pytest.mark.slow
def test_the_compiled_step_trains_as_the_eager_step():
    """torch.compile's networks (`--compile True`), the CPU's stand-in for a compiled GPU step, over 3 iterations."""
    if precision.compile_check() is not None:
        pytest.skip(f"torch.compile does not work here: {precision.compile_check()}")
    runs = []
    for compiled in (False, True):
        model, optimizers = fresh_model()
        if compiled:
            precision.compile_networks(model)
        torch.manual_seed(11)
        losses = [train_step(model, optimizers, frames, 1.0, 0.0001, torch.default_generator)
                  for frames in batches(3)]
        runs.append((losses, model.state_dict()))
    (eager_losses, eager_state), (compiled_losses, compiled_state) = runs
    for want, have in zip(eager_losses, compiled_losses, strict=True):
        for name in want:
            assert torch.allclose(want[name], have[name], rtol=1e-3, atol=1e-5), name
    # Adam moves a weight by about lr per step whatever its gradient's size, so a rounding difference that flips
    # the sign of a gradient near 0 moves the weight lr one way instead of the other: up to 2 lr per step apart
    # (measured: most weights within 2e-4 after 3 steps, the farthest 0.0061).
    for name, value in eager_state.items():
        if value.is_floating_point():
            assert (value - compiled_state[name]).abs().max() <= 2 * 3 * CONFIG["lr"], name


@pytest.mark.slow
@pytest.mark.e2e
def test_drnet_reconstruction_beats_the_blank_frame(tiny_args, tmp_path):
    # One grey digit: at batch 32, two colour digits stay at the blank frame's MSE for 600+ iterations (0.0154
    # against 0.0157), while one grey digit reaches 0.54x the blank frame's MSE by iteration 200.
    main(tiny_args("--batch_size", "32", "--max_iter", "200", "--save_iters", "200", "--num_digits", "1",
                   "--channels", "1"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "test_metrics.csv")))
    test_mse = float(rows[-1]["test_rec_mse"])
    frames = moving_mnist(str(tmp_path / "data"), "test", 64, 1, 20, num_digits=1).drnet_batch(
        256, torch.Generator().manual_seed(0))
    blank_mse = frames.pow(2).mean().item()  # the error of answering an all-black frame
    assert test_mse < 0.8 * blank_mse, (test_mse, blank_mse)
