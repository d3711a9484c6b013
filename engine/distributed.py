"""Data-parallel training over several processes, as `torchrun --nproc_per_node N main.py ...` starts them.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `start` joins the process group
they describe (NCCL on CUDA, one GPU per process: cuda:LOCAL_RANK; gloo on the CPU). Without them, or with
a world of one, every function here is a no-op and the single-process run is unchanged.

What makes N processes train like one on the concatenated batch:
- each rank draws batch_size / N clips per iteration from its own data generator (`data_seed`);
- gradients are averaged over ranks right before each optimizer step (`average_gradients`): every rank's
  loss is a mean over its equal share, so the average is the gradient of the global batch's mean loss;
- BatchNorm normalises with the statistics of the global batch (`sync_batchnorm`): torch.nn.SyncBatchNorm
  on CUDA; on the CPU, which SyncBatchNorm refuses, `AllReduceBatchNorm` below;
- the weights start equal (the same torch seed on every rank) and stay equal (same averaged steps).
Rank 0 alone writes files; the others run the same loop and the same collectives in the same order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from utils import DRNetError

_device: torch.device | None = None  # where this rank's collectives run: NCCL needs CUDA tensors


def launched() -> bool:
    """Whether torchrun (or anything that sets its environment) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 when not launched by it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """The number of training processes: 1 unless `start` joined a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: 0 unless `start` joined a process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return rank() == 0


def start(device: torch.device) -> None:
    """Join the process group torchrun's environment describes (a no-op outside torchrun), then wait for all."""
    global _device
    if not launched() or dist.is_initialized():
        return
    if device.type not in ("cuda", "cpu"):  # neither NCCL nor gloo takes MPS tensors
        raise DRNetError(f"several processes train on CUDA GPUs or on the CPU, not on {device.type}: pass "
                         "--device cuda or --device cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _device = device if device.type == "cuda" else torch.device("cpu")
    barrier()  # every rank has read and checked its configuration before rank 0 takes the run directory


def stop() -> None:
    """Leave the process group, if `start` joined one."""
    global _device
    if dist.is_initialized():
        dist.destroy_process_group()
    _device = None


def barrier() -> None:
    """Wait for every rank (a tiny all-reduce, which works the same on gloo and NCCL)."""
    if world_size() > 1:
        dist.all_reduce(torch.zeros(1, device=_device))


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a cache written to disk), the other ranks after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def per_rank_batch(batch_size: int, minimum: int) -> int:
    """Each rank's share of the global `batch_size`; a DRNetError when it does not divide or is below `minimum`."""
    ranks = world_size()
    if batch_size % ranks:
        raise DRNetError(f"--batch_size {batch_size} does not divide among {ranks} processes: pass a multiple of "
                         f"{ranks} (it is the global batch, split evenly)")
    if batch_size // ranks < minimum:
        raise DRNetError(f"--batch_size {batch_size} gives each of {ranks} processes {batch_size // ranks} clips; "
                         f"each needs at least {minimum}: pass at least {minimum * ranks}")
    return batch_size // ranks


def data_seed(seed: int) -> int:
    """The seed of this rank's data generator: `seed` on rank 0, as in a single process.

    Rank r adds r * 2**32: --seed is below 2**32, so no rank's stream is any other run's rank 0 stream, nor
    the test clips' (seed + 1).
    """
    return seed + rank() * 2**32


def gather_states(state: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """Every rank's generator state, in rank order, on every rank; `state` itself in a single process.

    All ranks must call it together; the states have one size (CPU generators), so a tensor gather does.
    """
    if world_size() == 1:
        return state
    gathered = [torch.empty_like(state, device=_device) for _ in range(world_size())]
    dist.all_gather(gathered, state.to(_device))
    return [s.cpu() for s in gathered]


def agree(values: dict[str, torch.Tensor | float], stop: bool) -> tuple[dict[str, torch.Tensor | float], bool]:
    """Metrics averaged over ranks, and whether any rank asked to stop (Ctrl-C): one all-reduce of a few numbers.

    Every rank then takes the same decisions (a non-finite loss, a clean stop) at the same iteration, so with
    several processes the metrics are read every iteration; one process gets `values` back as they are.
    """
    if world_size() == 1:
        return values, stop
    numbers = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(_device)
                           for v in (*values.values(), float(stop))])
    dist.all_reduce(numbers)
    means = (numbers[:-1] / world_size()).tolist()
    return dict(zip(values, means, strict=True)), bool(numbers[-1].item() > 0)


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of the parameters `optimizer` steps over ranks (one flat all-reduce)."""
    if world_size() == 1:
        return
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class SumOverRanks(torch.autograd.Function):
    """A tensor summed over ranks, differentiably: each rank's input gets the sum of every rank's gradient.

    torch.distributed.nn.functional.all_reduce does the same but is deprecated (torch 2.14 warns on each call).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, on the CPU (torch.nn.SyncBatchNorm refuses CPU tensors).

    In training it all-reduces each channel's sum and count, then its sum of squared deviations from the
    global mean (autograd-aware all-reduces: the backward pass sums the gradients of the statistics over
    ranks, as one BatchNorm on the concatenated batch has them), and updates the running statistics as
    nn.BatchNorm does, with the unbiased variance, so every rank keeps the same ones. In eval mode (with
    running statistics, as every BatchNorm of the networks here keeps) it is nn.BatchNorm: no collective.
    Its parameters and buffers are nn.BatchNorm's, so state dicts load either way. Input (N, C, ...).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected input of at least 2 dimensions (N, C, ...), got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or not self.track_running_stats  # nn.BatchNorm's rule
        if not batch_stats or world_size() == 1:
            return super().forward(x)
        dims, channels = [0, *range(2, x.dim())], x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        x32 = x.float()
        # Two passes, as nn.BatchNorm computes them: the one-pass E[x^2] - E[x]^2 loses float32 digits where a
        # channel's mean is large against its spread (the test's offset inputs: gradient errors 1e-4, here 6e-6).
        sums = SumOverRanks.apply(torch.cat([x32.sum(dims), x32.new_full((1,), x.numel() / channels)]))
        mean, count = sums[:-1] / sums[-1], sums[-1]
        centred = x32 - mean.view(shape)
        var = SumOverRanks.apply((centred * centred).sum(dims)) / count
        if self.training and self.track_running_stats:
            self.update_running_stats(mean.detach(), var.detach(), count.item())
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """Move the running statistics towards this batch's, as nn.BatchNorm does (momentum None: cumulative)."""
        self.num_batches_tracked += 1
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm normalising over the global batch when there are several ranks.

    CUDA: torch.nn.SyncBatchNorm (fused kernels); any other device: `AllReduceBatchNorm`. One rank: unchanged.
    """
    if world_size() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(model)


def _swap_batchnorm(module: nn.Module) -> nn.Module:
    """`module`, its BatchNorm layers (any dimension, affine or not) replaced by AllReduceBatchNorm ones."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        swapped = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats, device=tensors[0].device if tensors else None)
        swapped.load_state_dict(module.state_dict())
        return swapped.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _swap_batchnorm(child))
    return module
