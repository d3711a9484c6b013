"""How a run computes: bf16 autocast or fp32 (and why), memory layout, fused Adam, torch.compile.

On CPUs with AMX tiles (Intel Sapphire Rapids and later) or AVX-512 bf16, a DRNET iteration in bf16 autocast
on channels_last tensors takes 0.43x the fp32 one (measured on two cores of an AMX Xeon), and learns the
same. Elsewhere PyTorch emulates bf16 arithmetic, which is slower than fp32, so the
default, `--amp auto`, takes bf16 only where the CPU reports one of those features and a start-up check (one
small convolution, forward and backward) agrees with fp32. On GPUs bf16 changes the numerics a user asked
for and gains little at these sizes, so it is opt-in there (`--amp bf16`).

What stays fp32 under autocast: the parameters and Adam's moments (autocast never casts them), the losses
(`mse_loss` and `binary_cross_entropy_with_logits` run in fp32 under autocast) and the similarity target.

The rest changes speed, not what is computed: bf16 convolutions on a CPU run faster on channels_last
(NHWC) tensors, Adam's fused kernel updates all parameters in one call instead of one per tensor
(5x faster on a CPU), `--compile True` hands the networks to torch.compile, and `--cuda_graph True` records
a whole training step once as a CUDA graph and replays it (`CapturedStep`): at 64 px an eager step on a big
GPU is bound by launching its kernels one by one from Python, a replay launches them all at once.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

AMP_MODES = ("auto", "off", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the CPU features that make bf16 fast
CHECK_TOLERANCE = 0.05  # largest relative error of the start-up check's output and gradient against fp32


class Precision(NamedTuple):
    """The resolved precision: `dtype` is torch.bfloat16 for bf16 autocast, None for plain fp32."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        """'bf16' or 'fp32', for logs and tables."""
        return "fp32" if self.dtype is None else "bf16"


FP32 = Precision(None, "fp32")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed in `cpuinfo`; empty where the file does not exist (macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 and ARM spell it differently
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, for benchmark tables (speed claims name the machine they come from)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def bf16_check(device: torch.device) -> str | None:
    """Run one convolution forward and backward in fp32 and under bf16 autocast; None if they agree, else why not."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
    conv = conv.to(device)
    x = torch.rand(2, 3, 16, 16, generator=generator).to(device)
    results = []
    for dtype in (None, torch.bfloat16):
        conv.zero_grad()
        try:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = conv(x)
            out.float().square().mean().backward()
        except RuntimeError as error:  # a device whose autocast has no bf16 kernels
            return f"bf16 autocast failed on {device.type}: {str(error).splitlines()[0]}"
        if dtype is not None and out.dtype != torch.bfloat16:
            return f"autocast on {device.type} did not run the convolution in bf16"
        results.append((out.float(), conv.weight.grad.clone()))
    for name, reference, value in zip(("output", "gradient"), results[0], results[1], strict=True):
        if not torch.isfinite(value).all():
            return f"the bf16 {name} of the start-up check is not finite"
        error = ((value - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
        if error > CHECK_TOLERANCE:
            return f"the bf16 {name} of the start-up check is {error:.1%} off fp32 (tolerance {CHECK_TOLERANCE:.0%})"
    return None


def resolve_precision(mode: str, device: torch.device, flags: frozenset[str] | None = None) -> Precision:
    """Decide fp32 or bf16 for `--amp mode` on `device`; raise ValueError where bf16 was asked for and fails."""
    if mode not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, not {mode!r}")
    if mode == "off":
        return Precision(None, "--amp off")
    if device.type == "cpu":
        found = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
        if not found and mode == "auto":
            return Precision(None, f"--amp auto: this CPU has neither {' nor '.join(NATIVE_BF16_FLAGS)}, so bf16 "
                                   "would be emulated and slower than fp32")
        why = (f"the CPU has {', '.join(found)}" if found
               else "this CPU has no native bf16: it is emulated, probably slower than fp32")
    elif mode == "auto":
        return Precision(None, f"--amp auto uses bf16 on CPUs with native bf16 only; on {device.type} it is opt-in "
                               "(--amp bf16)")
    else:
        why = f"asked for on {device.type}"
    failure = bf16_check(device)
    if failure is not None:
        if mode == "bf16":
            raise ValueError(f"--amp bf16 cannot be used on {device.type}: {failure}")
        return Precision(None, f"--amp auto: {failure}")
    return Precision(torch.bfloat16, f"--amp {mode}: {why}; the start-up check agrees with fp32")


def autocast(precision: Precision, device: torch.device, cache: bool = True) -> AbstractContextManager:
    """The autocast context of `precision` on `device` (a no-op context for fp32). `cache=False` casts the weights
    afresh at every use, as a captured graph needs (a cached cast would be a copy the graph never refreshes)."""
    return torch.autocast(device.type, dtype=precision.dtype or torch.bfloat16, enabled=precision.dtype is not None,
                          cache_enabled=cache)


def uses_channels_last(precision: Precision, device: torch.device) -> bool:
    """Whether DRNET training keeps its frames and weights channels_last: bf16 on a CPU (where tools/speed.py measured
    it faster; fp32 convolutions gained nothing on an AVX2 CPU, and a GPU gains nothing at these sizes)."""
    return precision.dtype is not None and device.type == "cpu"


def to_channels_last(frames: torch.Tensor) -> torch.Tensor:
    """Frames (..., C, H, W) laid out channels_last, so that every (C, H, W) image in them is NHWC."""
    return frames.movedim(-3, -1).contiguous().movedim(-1, -3)


def adam(params: Iterable[nn.Parameter], lr: float, beta1: float) -> torch.optim.Adam:
    """Adam with beta2 0.999; fused into one kernel for CPU parameters, where that is 5x faster than PyTorch's
    default of one update per tensor. On an H200 the default (foreach) measured no slower, so GPUs keep it."""
    params = list(params)
    fused = all(p.device.type == "cpu" for p in params) or None
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=fused)


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Make Adam's update capturable in a CUDA graph (its step counts on the device, no host read) or not.

    Loading a state dict restores the saver's setting and, for a per-tensor Adam, its step counts on the CPU;
    this puts every count where the setting needs it (a fused or capturable Adam: on the parameter's device).
    """
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        on_device = capturable or bool(group.get("fused"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = (state["step"].to(param.device, torch.float32) if on_device
                                 else state["step"].cpu())


def compile_check() -> str | None:
    """Compile and run one tiny function with torch.compile; None if that works, else why not (one line)."""
    try:
        torch.compile(lambda x: torch.relu(x) * 2)(torch.ones(2))
    except Exception as error:  # a missing C++ compiler, an unsupported Python: inductor raises many kinds
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return None


def compile_networks(model: nn.Module) -> None:
    """Compile each network of `model` in place (torch.compile); the state_dict keys stay the same."""
    for network in model.children():
        network.compile()


class CapturedStep:
    """A training step `step(*inputs) -> {name: tensor}` recorded once as a CUDA graph, then replayed.

    `inputs` are example tensors: each call copies its arguments into static copies of them, replays the graph
    and returns a copy of the metrics (the graph overwrites its outputs at every replay). Capturing needs a few
    eager warm-up steps (cuBLAS and cuDNN set up their workspaces, Adam creates its moments); `state` (modules
    and optimizers) is put back afterwards, in place, so the first replay starts from the same weights, moments
    and BatchNorm statistics as an eager run would. With `capture=False` the same copies and warm-up run with
    the step called eagerly (what the CPU tests check). The step must not read anything on the host: no
    `.item()`, no copy from the CPU, and Adam capturable (`set_capturable`).
    """

    def __init__(self, step: Callable[..., dict[str, torch.Tensor]], inputs: Iterable[torch.Tensor],
                 state: Iterable[nn.Module | torch.optim.Optimizer], warmup: int = 3, capture: bool = True):
        self.step, self.static = step, [x.clone() for x in inputs]
        saved = [snapshot(holder) for holder in state]
        self.graph = None
        if capture:
            side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a loader thread that pins or copies the next batch meanwhile does not void the capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = step(*self.static)
        else:
            for _ in range(warmup):
                step(*self.static)
        for restore in saved:
            restore()

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        for static, value in zip(self.static, inputs, strict=True):
            static.copy_(value, non_blocking=True)
        outputs = self.step(*self.static) if self.graph is None else self.replay()
        names = list(outputs)
        values = torch.stack([outputs[name].float() for name in names])  # one copy of every metric
        return dict(zip(names, values.unbind(), strict=True))

    def replay(self) -> dict[str, torch.Tensor]:
        """Run the recorded step once on the static inputs; its outputs are the graph's, overwritten next time."""
        self.graph.replay()
        return self.outputs


def snapshot(holder: nn.Module | torch.optim.Optimizer) -> Callable[[], None]:
    """Save a module's weights and buffers or an optimizer's state; return what puts them back in place.

    In place: a captured graph holds the tensors' addresses. An optimizer state that did not exist yet comes
    back as zeros, which is how Adam starts (step 0, zero moments).
    """
    if isinstance(holder, nn.Module):
        tensors = list(holder.state_dict().values())  # they share storage with the weights and buffers
        saved = [t.clone() for t in tensors]
    else:
        params = [p for group in holder.param_groups for p in group["params"]]
        saved = {p: {k: v.clone() for k, v in holder.state[p].items() if torch.is_tensor(v)}
                 for p in params if p in holder.state}

    @torch.no_grad()
    def restore() -> None:
        if isinstance(holder, nn.Module):
            for tensor, value in zip(tensors, saved, strict=True):
                tensor.copy_(value)
            return
        for p, state in holder.state.items():
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if p in saved:
                    value.copy_(saved[p][key])
                else:
                    value.zero_()

    return restore
