"""tools/gpu_lstm.sh, the one GPU call for the shipped pose LSTM, in smoke mode on the CPU (slow)."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from engine.checkpoints import load_checkpoint, load_model

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.e2e
def test_the_gpu_lstm_call_in_smoke_mode_ranks_the_variants_and_exports_the_best(tmp_path):
    """SMOKE=1: two variants of the shipped LSTM trained 3 iterations at batch 4, evaluated, the best exported;
    rows: name, flags, iterations."""
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "RUNS": str(tmp_path / "runs"),
           "VARIANTS": "fast:--lr 0.001 --cuda_graph True;slow:--lr 0.00001",  # no graph on a CPU
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "tools/gpu_lstm.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(path.name for path in out.iterdir()) == [
        "best.txt", "gpu_lstm.log", "lstm.md", "pose_lstm_mnist_fp16.pt", "results.tar.gz"]  # $OUT brings back 8
    rows = (out / "lstm.md").read_text().splitlines()[2:]
    expected = [["| fast", "`--lr 0.001 --cuda_graph True`", "3"], ["| slow", "`--lr 0.00001`", "3"]]
    assert [row.split(" | ")[:3] for row in rows] == expected
    assert all("nan" not in row for row in rows)
    best = (out / "best.txt").read_text().split(":")[0]
    assert best in ("fast", "slow")
    with tarfile.open(out / "results.tar.gz") as results:
        names = results.getnames()
    assert {"./fast/eval/metrics.json", "./slow/eval/metrics.json", "./fast.log", "./slow.eval.log"} <= set(names)
    assert not any(name.endswith(".pt") for name in names)
    # The export pairs with the shipped DRNET: beside a copy of that file it loads as a predictor.
    shutil.copy(REPO / "saved_results" / "drnet_mnist_fp16.pt", out)
    exported = load_checkpoint(out / "pose_lstm_mnist_fp16.pt")
    assert exported["iteration"] == 3 and exported["config"]["rnn_size"] == 512
    assert exported["config"]["pose_noise"] == 0.05
    assert hasattr(load_model(out / "pose_lstm_mnist_fp16.pt"), "predict")
