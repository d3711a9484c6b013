"""The captured training step (--cuda_graph True) as far as a CPU can check it: the discriminator's pairs as
inputs, the static copies and warm-up that capture needs leave training as eager, Adam's capturable state,
the one-line refusal where no CUDA GPU is, and (slow) torch.compile's step against eager."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from datasets.registry import DATASETS
from engine import precision
from engine.checkpoints import load_model
from engine.precision import CapturedStep, set_capturable
from models import DRNet, discriminator_pairs
from train_drnet import captured_step, make_optimizers, pair_indices, train_step

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parent.parent
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


def test_a_step_that_is_called_again_leaves_the_metrics_it_returned():
    calls = []

    def step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"sum": x.sum(), "max": x.max()}

    graphed = CapturedStep(step, [torch.zeros(3)], [], warmup=2, capture=False)
    first = graphed(torch.ones(3))
    second = graphed(torch.full((3,), 2.0))
    assert len(calls) == 4 and first["sum"].item() == 3 and second["max"].item() == 2


def test_set_capturable_puts_adam_step_counts_where_the_setting_needs_them():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.Adam([weight], fused=False)
    weight.grad = torch.ones(2)
    optimizer.step()
    set_capturable(optimizer, True)
    assert optimizer.param_groups[0]["capturable"] and optimizer.state[weight]["step"].dtype == torch.float32
    set_capturable(optimizer, False)
    assert not optimizer.param_groups[0]["capturable"] and optimizer.state[weight]["step"].item() == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--cuda_graph", "True"], "--cuda_graph True needs one CUDA GPU in one process; this run is on cpu: drop the "
                               "flag"),
    (["--cuda_graph", "True", "--compile", "True"], "--cuda_graph True captures the eager DRNET step only: drop "
                                                    "--compile True"),
])
def test_cuda_graph_where_it_cannot_run_is_one_line(tiny_args, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main.main(tiny_args(*flags))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [f"error: {message}"]
    assert not (tmp_path / "run").exists()


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
def test_the_gpu_campaign_in_smoke_mode_writes_every_result(tmp_path):
    """tools/gpu_campaign.sh with SMOKE=1: every stage on the CPU at batch 4, a few iterations each."""
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "RUNS": str(tmp_path / "runs"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "tools/gpu_campaign.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    speed = (out / "speed.md").read_text()
    assert "| ours, mnist, batch 4, 64 px | cpu" in speed
    assert "| captured | skipped: graph capture needs a CUDA GPU, this run is on cpu |" in speed
    equivalence = (out / "equivalence.md").read_text().splitlines()[2:]
    assert len(equivalence) == 5 and all("| 2 | none |" in row for row in equivalence)  # both eager on a CPU
    screen = (out / "screen.md").read_text()
    assert all(f"| {name} | 2 |" in screen for name in ("sphere", "lua", "py", "lua_pose10"))
    best = (out / "best.txt").read_text().split(":")[0]
    assert "content transfer" in (out / f"eval_{best}.txt").read_text()
    parts = sorted(out.glob(f"best_{best}.half.pt.part*"))
    (tmp_path / "joined.pt").write_bytes(b"".join(part.read_bytes() for part in parts))
    assert hasattr(load_model(tmp_path / "joined.pt"), "predict")  # the LSTM stage ran: DRNET and LSTM together
    for name in ("content_transfer.png", "results.tar.gz", "campaign.log"):
        assert (out / name).stat().st_size > 0, name
