"""tools/pose_probe.py: the velocity fit, which axes count as straight, the probe itself, and one probed run."""

import subprocess
import sys

import pytest
import torch
from fakes.runs import REPO, write_checkpoint

from tools.pose_probe import fit_probe, probe_checkpoint, straight, velocity_fit


def test_velocity_fit_is_the_least_squares_slope():
    places = torch.tensor([[[0.0, 5.0], [2.0, 4.0], [4.0, 3.0]]])  # (1 clip, 3 frames, 2 axes): exact lines
    assert velocity_fit(places).tolist() == [[2.0, -1.0]]
    noisy = torch.tensor([[[0.0], [1.0], [1.0], [3.0]]])  # slope = sum((t - 1.5)(x - 1.25)) / 5 = 4.5 / 5
    assert velocity_fit(noisy).item() == pytest.approx(0.9)


def test_an_axis_that_bounces_is_not_straight():
    corners = torch.tensor([[[30.0, 4.0], [31.0, 6.0], [32.0, 8.0], [31.0, 10.0]]])  # the rows bounce at 32
    assert straight(corners, torch.tensor([[1.0, 2.0]])).tolist() == [[False, True]]


def test_the_probe_learns_a_linear_map_of_the_pose():
    poses = torch.rand(2000, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    places = poses @ torch.tensor([[10.0, 0.0], [0.0, 10.0], [5.0, 0.0], [0.0, 0.0], [0.0, -5.0]]) + 16
    probe = fit_probe(poses, places, iterations=600)
    with torch.no_grad():
        error = (probe(poses) - places).abs().mean().item()
    assert error < 0.5 < places.std().item()  # about a pixel or better, where the places spread over ~8 px


@pytest.mark.e2e
def test_a_probed_run_gives_every_figure(grey_run, monkeypatch):
    monkeypatch.chdir(grey_run.parent)  # the run's data root is `data` beside it
    for path in (grey_run / "checkpoint.pt", grey_run / "lstm" / "checkpoint.pt"):
        row = probe_checkpoint(str(path), clips=8, frames=4, iterations=5, seed=1)
        assert set(row) == {"place rms px", "place median px", "velocity rms px/frame", "velocity rounds right",
                            "axes fitted"}
        assert 0 < row["place rms px"] < 64 and 0 <= row["velocity rounds right"] <= 1
        assert 0 < row["axes fitted"] <= 8 * 4  # grey_run's clips hold two digits: four axes per clip


def test_a_model_of_another_dataset_is_refused_in_one_line(tmp_path):
    path = write_checkpoint(tmp_path / "lstm.pt", tmp_path / "data", dataset="kth")
    result = subprocess.run([sys.executable, "-m", "tools.pose_probe", str(path)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2
    refusal = f"error: the pose probe reads Moving MNIST digits; {path} is a kth model"
    assert result.stderr.strip().splitlines() == [refusal]
