"""The --amp decision: CPU flags, the start-up check, and what stays fp32 under bf16 autocast."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import precision
from engine.precision import Precision, autocast, cpu_flags, cpu_model, resolve_precision

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


def test_the_run_log_says_which_precision_and_why(tmp_path, monkeypatch, tiny_args):
    import main

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    main.main(tiny_args("--amp", "auto", "--max_iter", "1"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision fp32: --amp auto: this CPU has neither amx_bf16 nor avx512_bf16" in log
    assert '"amp": "auto"' in log


def test_an_unknown_amp_mode_is_a_usage_error(tiny_args, capsys):
    import main

    with pytest.raises(SystemExit) as exit_info:
        main.main(tiny_args("--amp", "fp16"))
    assert exit_info.value.code == 2 and "--amp" in capsys.readouterr().err
