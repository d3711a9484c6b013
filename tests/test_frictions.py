"""Issue 25, what a new user meets first: commands under datasets/ run by path, torch.hub without a checkpoint,
where the demo and the evaluation write and what they say they wrote."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import demo
from utils import DRNetError

REPO = Path(__file__).resolve().parent.parent
COMMANDS = sorted(path.name for path in (REPO / "datasets").glob("*.py")
                  if 'if __name__ == "__main__":' in path.read_text())


def test_every_command_under_datasets_runs_by_path_from_any_folder(tmp_path):
    assert {"convert_kth.py", "kth_download.py", "norb.py"} <= set(COMMANDS)
    for name in COMMANDS:  # `python datasets/x.py` puts datasets/, not the repository, first on the path
        done = subprocess.run([sys.executable, str(REPO / "datasets" / name), "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("usage:"), (name, done.stderr[-300:])


def test_torch_hub_without_a_checkpoint_is_one_line():
    with pytest.raises(DRNetError, match='pass checkpoint="runs/mnist/checkpoint.pt"') as error:
        torch.hub.load(str(REPO), "drnet", source="local")
    assert "\n" not in str(error.value)


def test_the_demo_lists_the_files_it_wrote(tmp_path, capsys, monkeypatch):
    from test_benchmark import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "lstm.pt", tmp_path / "data")
    monkeypatch.setattr(demo, "SWAP_CLIPS", 8)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("from before")
    os.utime(tmp_path / "out" / "old.txt", (0, 0))  # written long ago: not this run's
    demo.main(["--model", str(checkpoint), "--out", str(tmp_path / "out"), "--frames", "2"])
    line = capsys.readouterr().out.splitlines()[-1]
    written = re.match(r"wrote (.*) in (.*)/ \(\d+ s\)$", line)
    assert written and written[2] == str(tmp_path / "out")
    names = written[1].split(", ")
    assert {"analogy.png", "swaps.png", "rollout.gif"} <= set(names) and "old.txt" not in names
    assert all((tmp_path / "out" / name).is_file() for name in names)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_default_outputs_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "demo/analogy.png", "saved_results/eval/metrics.json",
                              "saved_results/benchmark/moving_mnist_10_to_10/preds.npy"], cwd=REPO,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["demo/analogy.png", "saved_results/eval/metrics.json",
                                      "saved_results/benchmark/moving_mnist_10_to_10/preds.npy"]
