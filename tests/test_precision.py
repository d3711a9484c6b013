"""engine/precision.py: the --amp decision (CPU flags, the start-up check, what stays fp32 under bf16 autocast),
and the speed settings, which change how fast a run goes, never what it computes (beyond float rounding): fused
Adam, channels_last under bf16, --compile, and the captured step of --cuda_graph as far as a CPU can check it."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import main
from engine import precision
from engine.checkpoints import load_optimizer
from engine.precision import (
    CapturedStep,
    Precision,
    adam,
    autocast,
    compile_networks,
    cpu_flags,
    cpu_model,
    resolve_precision,
    set_capturable,
    to_channels_last,
    uses_channels_last,
)
from models import PoseLSTM
from train_lstm import captured_update, lstm_update, pose_loss
from utils import read_metrics

CPU = torch.device("cpu")
XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
EPYC = ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n\n"
        "processor\t: 1\nflags\t\t: amx_bf16\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_flags_and_model_come_from_the_first_cpu(tmp_path):
    assert cpu_flags(write(tmp_path, XEON)) >= {"amx_bf16", "avx512f"}
    assert "amx_bf16" not in cpu_flags(write(tmp_path, EPYC))  # the second CPU's line is not read
    assert cpu_model(write(tmp_path, EPYC)) == "AMD EPYC 7B13"
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_uses_bf16_only_with_native_bf16():
    assert resolve_precision("auto", CPU, frozenset({"avx2", "amx_bf16"})).dtype == torch.bfloat16
    assert resolve_precision("auto", CPU, frozenset({"avx512_bf16"})).dtype == torch.bfloat16
    without = resolve_precision("auto", CPU, frozenset({"avx2", "avx512f"}))
    assert without.dtype is None and without.name == "fp32"
    assert "amx_bf16" in without.reason and "emulated" in without.reason  # the log says why not


def test_off_and_explicit_bf16():
    assert resolve_precision("off", CPU, frozenset({"amx_bf16"})) == Precision(None, "--amp off")
    forced = resolve_precision("bf16", CPU, frozenset())
    assert forced.dtype == torch.bfloat16 and "emulated" in forced.reason


def test_a_failing_start_up_check_falls_back_or_refuses(monkeypatch):
    monkeypatch.setattr(precision, "bf16_check", lambda device: "the bf16 output is 50.0% off fp32")
    fallback = resolve_precision("auto", CPU, frozenset({"amx_bf16"}))
    assert fallback.dtype is None and "50.0% off" in fallback.reason
    with pytest.raises(ValueError, match="cannot be used on cpu"):
        resolve_precision("bf16", CPU, frozenset({"amx_bf16"}))
    with pytest.raises(ValueError, match="--amp must be one of"):
        resolve_precision("fp16", CPU)


def test_auto_on_a_gpu_stays_fp32_without_asking():
    decision = resolve_precision("auto", torch.device("cuda"), frozenset({"amx_bf16"}))
    assert decision.dtype is None and "opt-in" in decision.reason


def test_the_start_up_check_passes_on_this_cpu():
    assert precision.bf16_check(CPU) is None


def test_losses_stay_fp32_under_bf16_autocast():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(2, 1, 8, 8)
    with autocast(Precision(torch.bfloat16, "test"), CPU):
        out = torch.sigmoid(conv(x))
        rec = F.mse_loss(out, x)
        adv = F.binary_cross_entropy_with_logits(out.flatten(1).sum(1), torch.full((2,), 0.5))
    assert out.dtype == torch.bfloat16
    assert rec.dtype == torch.float32 and adv.dtype == torch.float32
    rec.backward()
    assert conv.weight.grad.dtype == torch.float32  # parameters and their gradients are never cast
    with autocast(Precision(None, "off"), CPU):
        assert conv(x).dtype == torch.float32


def test_a_bf16_step_is_finite_and_close_to_fp32():
    from datasets.registry import DATASETS
    from models import DRNet
    from train_drnet import make_optimizers, train_step

    config = {**{k: v for k, v in DATASETS["mnist"].items() if k != "loader"}, "content_dim": 16, "lr": 0.002,
              "beta1": 0.5, "content_affine": True, "normalize": False}
    frames = torch.rand(4, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = DRNet(config)
        with autocast(Precision(dtype, name), CPU):
            losses[name] = train_step(model, make_optimizers(model, config), frames, 1.0, 1e-4,
                                      torch.Generator().manual_seed(1))
        assert next(model.parameters()).dtype == torch.float32  # the weights stay fp32 after the bf16 step
    for key in ("rec", "sim", "adv"):
        assert losses["bf16"][key].dtype == torch.float32  # losses are computed in fp32 under autocast
        assert torch.isfinite(losses["bf16"][key])
        assert losses["bf16"][key].item() == pytest.approx(losses["fp32"][key].item(), rel=0.05, abs=1e-3)


@pytest.mark.e2e
def test_the_run_log_says_which_precision_and_why(tmp_path, monkeypatch, tiny_args):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    main.main(tiny_args("--amp", "auto", "--max_iter", "1"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision fp32: --amp auto: this CPU has neither amx_bf16 nor avx512_bf16" in log
    assert '"amp": "auto"' in log


@pytest.mark.e2e
def test_an_unknown_amp_mode_is_a_usage_error(tiny_args, fails_with_one_line):
    fails_with_one_line(tiny_args("--amp", "fp16"), "--amp")


@pytest.mark.e2e
def test_the_default_amp_is_auto_and_takes_bf16_with_channels_last_on_an_amx_cpu(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16", "avx512f"}))
    main.main(tiny_args("--max_iter", "1", "--batch_size", "2"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision bf16: --amp auto: the CPU has amx_bf16; the start-up check agrees with fp32" in log
    assert "channels_last" in log


# Fused Adam and channels_last.

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


# --compile.

def test_compiling_keeps_the_state_dict_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    keys = list(model.state_dict())
    compile_networks(model)
    assert list(model.state_dict()) == keys


@pytest.mark.e2e
def test_compile_that_cannot_work_here_is_one_line(tiny_args, tmp_path, fails_with_one_line, monkeypatch):
    monkeypatch.setattr(main, "compile_check", lambda: "InvalidCxxCompiler: no working C++ compiler found")
    fails_with_one_line(tiny_args("--compile", "True"), "error: --compile True: torch.compile does not work here "
                        "(InvalidCxxCompiler: no working C++ compiler found); drop the flag", alone=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_compiled_run_trains_and_resumes(tiny_args, tmp_path):
    if precision.compile_check() is not None:
        pytest.skip(f"torch.compile does not work here: {precision.compile_check()}")
    main.main(tiny_args("--compile", "True", "--max_iter", "1"))
    main.main(tiny_args("--compile", "True", "--resume", "True"))
    assert [row["iteration"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2]


# The captured step (--cuda_graph True).

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


@pytest.mark.e2e
@pytest.mark.parametrize(("flags", "message"), [
    (["--cuda_graph", "True"], "--cuda_graph True needs one CUDA GPU in one process; this run is on cpu: drop the "
                               "flag"),
    (["--cuda_graph", "True", "--compile", "True"], "--cuda_graph True captures the eager step: drop --compile True"),
])
def test_cuda_graph_where_it_cannot_run_is_one_line(tiny_args, tmp_path, fails_with_one_line, flags, message):
    fails_with_one_line(tiny_args(*flags), f"error: {message}", alone=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(("pool", "message"), [
    ("0", "--cuda_graph True captures the LSTM update on the clip pool's stored vectors: give --code_pool a number "
          "of clips, or drop --cuda_graph"),
    ("8", "--cuda_graph True needs one CUDA GPU in one process; this run is on cpu: drop the flag"),
])
def test_a_captured_lstm_stage_needs_a_pool_and_a_gpu(pool, message, drnet_dir, tiny, tmp_path, fails_with_one_line):
    fails_with_one_line(["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--save_dir",
                         str(tmp_path / "run"), "--cuda_graph", "True", "--code_pool", pool, *tiny],
                        f"error: {message}", alone=True)
    assert not (tmp_path / "run" / "lstm" / "checkpoint.pt").exists()


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_the_static_lstm_update_after_its_warm_up_trains_exactly_as_the_eager_update(sigma):
    """`--cuda_graph True` in the LSTM stage as far as a CPU can check it: static copies of the pool batch (and the
    noise), warm-up updates taken back, then the same losses, weights and Adam moments as eager updates."""
    def fresh() -> tuple[PoseLSTM, torch.optim.Optimizer]:
        torch.manual_seed(4)
        lstm = PoseLSTM(content_dim=6, pose_dim=3, hidden=8)
        return lstm, adam(lstm.parameters(), 0.01, 0.9)

    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 6, generator=generator), torch.randn(5, 7, 3, generator=generator),
                sigma * torch.randn(5, 6, 3, generator=generator)) for _ in range(3)]
    read_back = [False] * 6
    (eager, eager_adam), (static, static_adam) = fresh(), fresh()
    expected = [lstm_update(eager, eager_adam, content, poses, read_back, noise if sigma else None)
                for content, poses, noise in batches]
    update = captured_update(static, static_adam, batches[0] if sigma else batches[0][:2], read_back, capture=False)
    got = [update(*(batch if sigma else batch[:2])) for batch in batches]
    assert all(torch.equal(want, have) for want, have in zip(expected, got, strict=True))
    assert len(set(float(loss) for loss in got)) == 3  # three different batches, three updates
    for (name, a), b in zip(eager.state_dict().items(), static.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    weight = next(static.parameters())
    assert static_adam.state[weight]["step"].item() == 3  # the warm-up's updates were taken back
    assert torch.equal(static_adam.state[weight]["exp_avg"], eager_adam.state[next(eager.parameters())]["exp_avg"])


@pytest.mark.e2e
def test_a_run_with_its_lstm_update_on_static_inputs_equals_an_eager_run(drnet_dir, tiny, tmp_path, monkeypatch):
    """The LSTM stage of `--cuda_graph True` on a CPU: the update is wrapped once the pool is full (after 2 of 5
    iterations), on static inputs without recording; the weights, Adam and the losses are an eager run's."""
    import train_lstm

    wrapped = []

    def static_update(*args, **kwargs):
        wrapped.append(1)
        return captured_update(*args, **kwargs, capture=False)

    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--rollout_len", "3",
              "--save_iters", "5", "--max_iter", "5", "--code_pool", "8", "--pose_noise", "0.05", *tiny]
    main.main([*common, "--save_dir", str(tmp_path / "eager")])
    monkeypatch.setattr(main, "check_cuda_graph", lambda config, device: None)
    monkeypatch.setattr(train_lstm, "captured_update", static_update)
    main.main([*common, "--save_dir", str(tmp_path / "static"), "--cuda_graph", "True"])
    assert wrapped == [1]
    runs = {name: torch.load(tmp_path / name / "lstm" / "checkpoint.pt", weights_only=True)
            for name in ("eager", "static")}
    assert all(torch.equal(v, runs["static"]["lstm"][k]) for k, v in runs["eager"]["lstm"].items())
    moments = [run["optimizers"]["lstm"]["state"][0]["exp_avg_sq"] for run in runs.values()]
    assert torch.equal(*moments)
    assert (read_metrics(tmp_path / "eager" / "lstm" / "metrics.csv")
            == read_metrics(tmp_path / "static" / "lstm" / "metrics.csv"))


def test_amp_lstm_runs_the_lstm_in_bf16_and_the_loss_and_weights_in_fp32():
    torch.manual_seed(2)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=16, layers=2)
    content, poses = torch.randn(4, 2), torch.rand(4, 9, 3) * 2 - 1
    bf16 = Precision(torch.bfloat16, "test")
    with torch.autocast("cpu", torch.bfloat16):
        predicted = lstm(content, poses[:, :-1])
    assert predicted.dtype == torch.bfloat16
    expected = ((predicted.float() - poses[:, 1:]) ** 2).mean()
    loss = pose_loss(lstm, content, poses, precision=bf16)
    assert loss.dtype == torch.float32 and loss.item() == expected.item()
    fp32 = pose_loss(lstm, content, poses)
    assert loss.item() != fp32.item() and loss.item() == pytest.approx(fp32.item(), rel=0.05)
    optimizer = torch.optim.Adam(lstm.parameters(), 1e-3)
    before = [p.detach().clone() for p in lstm.parameters()]
    lstm_update(lstm, optimizer, content, poses, precision=bf16)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lstm.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, lstm.parameters(), strict=True))
