"""Slow checks that training really learns (run with `python -m pytest -m slow`; CI leaves them out)."""

import csv

import pytest
import torch

from datasets.moving_mnist import moving_mnist
from main import main


@pytest.mark.slow
def test_drnet_reconstruction_beats_the_blank_frame(tiny_args, tmp_path):
    # One grey digit: at batch 32, two colour digits stay at the blank frame's MSE for 600+ iterations (0.0154
    # against 0.0157), while one grey digit reaches 0.54x the blank frame's MSE by iteration 200.
    main(tiny_args("--batch_size", "32", "--max_iter", "200", "--save_iters", "200", "--num_digits", "1",
                   "--channels", "1"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "test_metrics.csv")))
    test_mse = float(rows[-1]["test_rec_mse"])
    frames = moving_mnist(str(tmp_path / "data"), "test", 64, 1, 20, num_digits=1).drnet_batch(
        256, torch.Generator().manual_seed(0))
    blank_mse = frames.pow(2).mean().item()  # the error of answering an all-black frame
    assert test_mse < 0.8 * blank_mse, (test_mse, blank_mse)
