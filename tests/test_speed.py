"""Speed settings: losses read every few iterations, fused Adam, channels_last under bf16, pinned batches,
and --compile. Each changes how fast a run goes, never what it computes (beyond float rounding)."""

import math

import pytest
import torch

import main
from datasets.prefetch import BatchStream
from engine import loop as training_loop
from engine import precision
from engine.checkpoints import load_optimizer
from engine.loop import read_losses
from engine.precision import adam, compile_networks, to_channels_last, uses_channels_last
from utils import DRNetError, MetricsLog, read_metrics

CPU = torch.device("cpu")


def loop(tmp_path, losses: list[float], sync_every: int, save_iters: int, monkeypatch) -> tuple[list, list]:
    """run_iterations over a step returning tensor losses in turn; the saves and the sizes of each read."""
    reads, saved = [], []
    real_read = training_loop.read_losses
    monkeypatch.setattr(training_loop, "read_losses", lambda pending: reads.append(len(pending)) or real_read(pending))
    values = iter(losses)
    config = {"max_iter": len(losses), "save_iters": save_iters, "sync_every": sync_every,
              "run_dir": str(tmp_path), "quiet": True}
    metrics = MetricsLog(tmp_path / "metrics.csv", ["rec", "disc_acc"])
    training_loop.run_iterations(config, 0, "DRNET", BatchStream(lambda g: torch.zeros(1), torch.Generator(), 0),
                        lambda batch: {"rec": torch.tensor(next(values)), "disc_acc": torch.tensor(0.5)},
                        metrics, lambda iteration, state: saved.append(iteration), "--resume True")
    return reads, saved


def test_losses_are_read_every_n_iterations_and_before_every_save(tmp_path, monkeypatch):
    losses = [1.0 / i for i in range(1, 11)]
    reads, saved = loop(tmp_path, losses, sync_every=4, save_iters=6, monkeypatch=monkeypatch)
    assert reads == [4, 2, 4]  # iteration 4 (sync_every), 6 (a save), 10 (the last, a save)
    assert saved == [6, 10]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [row["iteration"] for row in rows] == list(range(1, 11))  # still a row per iteration
    assert [row["rec"] for row in rows] == pytest.approx(losses, rel=1e-5)  # as the CSV writes them


def test_a_non_finite_loss_in_a_batch_of_reads_stops_before_the_save(tmp_path, monkeypatch):
    with pytest.raises(DRNetError, match="DRNET stopped at iteration 2: the loss is not finite"):
        loop(tmp_path, [1.0, math.inf, 0.5, 0.4], sync_every=10, save_iters=4, monkeypatch=monkeypatch)
    assert [row["iteration"] for row in read_metrics(tmp_path / "metrics.csv")] == [1]


def test_read_losses_takes_tensors_and_numbers():
    pending = [(1, {"a": torch.tensor(0.25), "b": 1.0}), (2, {"a": torch.tensor(0.5), "b": 2.0})]
    assert read_losses(pending) == [(1, {"a": 0.25, "b": 1.0}), (2, {"a": 0.5, "b": 2.0})]


def test_adam_is_fused_on_the_cpu_and_resumes_from_an_unfused_state():
    torch.manual_seed(0)
    weights = torch.nn.Linear(3, 2)
    old = torch.optim.Adam(weights.parameters(), lr=0.1)  # what checkpoints before fused Adam hold
    weights(torch.ones(1, 3)).sum().backward()
    old.step()
    fused = adam(weights.parameters(), lr=0.1, beta1=0.5)
    assert fused.param_groups[0]["fused"] is True
    load_optimizer(fused, old.state_dict(), {"lr": 0.01, "beta1": 0.5})
    group = fused.param_groups[0]
    assert group["fused"] is True and group["lr"] == 0.01 and group["betas"] == (0.5, 0.999)
    fused.step()  # the loaded state works with the fused kernel
    assert all(torch.isfinite(p).all() for p in weights.parameters())


def test_fused_adam_takes_the_step_of_per_tensor_adam():
    steps = {}
    for name, make in (("fused", lambda p: adam(p, 0.01, 0.5)),
                       ("per tensor", lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.5, 0.999)))):
        torch.manual_seed(0)
        weights = torch.nn.Linear(4, 3)
        optimizer = make(weights.parameters())
        for _ in range(3):
            optimizer.zero_grad()
            weights(torch.arange(8.0).view(2, 4)).square().sum().backward()
            optimizer.step()
        steps[name] = weights.weight.detach().clone()
    torch.testing.assert_close(steps["fused"], steps["per tensor"])


def test_channels_last_goes_with_bf16_on_the_cpu_only():
    bf16, fp32 = precision.Precision(torch.bfloat16, "bf16"), precision.FP32
    assert uses_channels_last(bf16, CPU)
    assert not uses_channels_last(fp32, CPU)
    assert not uses_channels_last(bf16, torch.device("cuda"))
    frames = torch.rand(4, 2, 3, 8, 8)
    nhwc = to_channels_last(frames)
    assert torch.equal(nhwc, frames)
    assert all(nhwc[i].is_contiguous(memory_format=torch.channels_last) for i in range(4))


def test_pinned_batches_pin_what_was_drawn_on_the_cpu(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    with BatchStream(lambda g: torch.zeros(2, 3), torch.Generator(), 1, pin_memory=True) as stream:
        next(stream)
    assert pinned and pinned[0] == (2, 3)
    pinned.clear()
    with BatchStream(lambda g: torch.zeros(2, 3), torch.Generator(), 0) as stream:
        next(stream)
    assert not pinned


def test_compiling_keeps_the_state_dict_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    keys = list(model.state_dict())
    compile_networks(model)
    assert list(model.state_dict()) == keys


def test_compile_that_cannot_work_here_is_one_line(tiny_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(main, "compile_check", lambda: "InvalidCxxCompiler: no working C++ compiler found")
    with pytest.raises(SystemExit) as exit_info:
        main.main(tiny_args("--compile", "True"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err == ["error: --compile True: torch.compile does not work here (InvalidCxxCompiler: no working C++ "
                   "compiler found); drop the flag"]
    assert not (tmp_path / "run").exists()


def test_the_default_amp_is_auto_and_takes_bf16_with_channels_last_on_an_amx_cpu(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16", "avx512f"}))
    main.main(tiny_args("--max_iter", "1", "--batch_size", "2"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision bf16: --amp auto: the CPU has amx_bf16; the start-up check agrees with fp32" in log
    assert "channels_last" in log


@pytest.mark.slow
def test_a_compiled_run_trains_and_resumes(tiny_args, tmp_path):
    if precision.compile_check() is not None:
        pytest.skip(f"torch.compile does not work here: {precision.compile_check()}")
    main.main(tiny_args("--compile", "True", "--max_iter", "1"))
    main.main(tiny_args("--compile", "True", "--resume", "True"))
    assert [row["iteration"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2]
