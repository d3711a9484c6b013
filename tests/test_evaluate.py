"""Tests for evaluate.py and `main.py --evaluate`: swap ground truth, probes, leakage, prediction, outputs."""

import json
from pathlib import Path

import pytest
import torch

import evaluate
import main
from datasets import moving_mnist
from datasets.moving_mnist import DIGIT_SIZE, Clips, MovingMNIST
from metrics import mse, per_step
from models import Content, discriminator_pairs
from train import checkpoint_path

EVAL_FLAGS = ["--eval_clips", "6", "--eval_steps", "3", "--device", "cpu"]
CPU = torch.device("cpu")


def synthetic_mnist(num_digits: int = 2, max_step: int = 5) -> MovingMNIST:
    """Moving MNIST over ten made-up 'digits': rectangles from the top-left corner, of different size and ink."""
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    for i in range(10):
        images[i, :26 - i, :24 - i] = 60 + 19 * i
    return MovingMNIST(images, torch.arange(10), 64, 3, max_step, num_digits)


def painted(dataset: MovingMNIST, digits: list[int], corners: list[tuple[int, int]], front: int) -> torch.Tensor:
    """One frame (3, 64, 64) painted by hand: digit n in channel n at its corner, the front digit on top."""
    layers = torch.zeros(len(digits), 64, 64)
    for n, (digit, (row, col)) in enumerate(zip(digits, corners, strict=True)):
        layers[n, row:row + DIGIT_SIZE, col:col + DIGIT_SIZE] = dataset.digits[digit]
    for n in range(len(digits)):
        if n != front:
            layers[n][layers[front] > 0] = 0
    frame = torch.zeros(3, 64, 64)
    frame[:len(digits)] = layers
    return frame


def test_swap_ground_truth_draws_a_digits_on_b_trajectory() -> None:
    dataset = synthetic_mnist()
    clips_a = Clips(digits=torch.tensor([[1, 2]]), start=torch.tensor([[[10, 12], [40, 5]]]),
                    velocity=torch.tensor([[[2, 2], [-1, 3]]]), front=torch.tensor([0]))
    clips_b = Clips(digits=torch.tensor([[7, 8]]), start=torch.tensor([[[3, 10], [20, 30]]]),
                    velocity=torch.tensor([[[-1, 2], [4, 3]]]), front=torch.tensor([1]))
    truth = evaluate.swap_ground_truth(dataset, clips_a, clips_b, torch.tensor([[0, 3]]))
    # B's corners by hand. t=0: its starts, overlapping, so A's front digit (0, not B's 1) hides the other.
    # t=3: digit 0 at (0, 16); digit 1 at row 32, and column 39 reflected at the border 32 back to 25.
    assert torch.equal(truth[0, 0], painted(dataset, [1, 2], [(3, 10), (20, 30)], front=0))
    assert torch.equal(truth[0, 1], painted(dataset, [1, 2], [(0, 16), (32, 25)], front=0))
    hand_positions = torch.tensor([[[[3, 10], [0, 16]], [[20, 30], [32, 25]]]])
    assert torch.equal(truth, dataset.render(clips_a.digits, hand_positions, clips_a.front))
    assert not torch.equal(truth, dataset.render_clips(clips_b, torch.tensor([[0, 3]])))  # B's own digits differ


class SwapAnswer:
    """A stand-in model that answers a swap with one of its two input frames."""

    def __init__(self, answer: str):
        self.answer = answer

    def __call__(self, x_content: torch.Tensor, x_pose: torch.Tensor) -> torch.Tensor:
        return x_pose if self.answer == "pose" else x_content


def test_swap_metrics_score_the_trivial_answers_as_their_baselines(tmp_path: Path) -> None:
    dataset = synthetic_mnist()
    pose = evaluate.swap_metrics(SwapAnswer("pose"), dataset, 12, torch.Generator().manual_seed(0), CPU,
                                 tmp_path / "swap.png")
    assert pose["mse"] == pose["pose_frame_mse"] > 0 and pose["improvement_over_pose_frame"] == 0
    assert (tmp_path / "swap.png").is_file()
    content = evaluate.swap_metrics(SwapAnswer("content"), dataset, 12, torch.Generator().manual_seed(0), CPU)
    assert content["mse"] == content["content_frame_mse"] == pose["content_frame_mse"]


def test_reconstruction_of_the_pose_frame_itself_is_perfect() -> None:
    frames = synthetic_mnist().drnet_batch(5, torch.Generator().manual_seed(0))
    scores = evaluate.reconstruction_metrics(SwapAnswer("pose"), frames, CPU)
    assert scores["mse"] == 0 and scores["ssim"] == pytest.approx(1.0) and scores["psnr"] == pytest.approx(100.0)
    assert scores["copy_content_frame_mse"] == pytest.approx(mse(frames[0], frames[2]).mean().item())


def test_probes_read_labels_from_informative_features_only() -> None:
    generator = torch.Generator().manual_seed(0)
    fit_y, score_y = torch.randint(10, (400,), generator=generator), torch.randint(10, (400,), generator=generator)
    one_hot = torch.nn.functional.one_hot
    assert evaluate.linear_probe_accuracy(one_hot(fit_y, 10).float(), fit_y, one_hot(score_y, 10).float(),
                                          score_y) == 1.0
    noise = evaluate.linear_probe_accuracy(torch.randn(400, 16, generator=generator), fit_y,
                                           torch.randn(400, 16, generator=generator), score_y)
    assert noise < 0.2  # chance is 0.1
    weights = torch.randn(8, 4, generator=generator)
    fit_x, score_x = torch.randn(300, 8, generator=generator), torch.randn(300, 8, generator=generator)
    assert evaluate.linear_probe_r2(fit_x, fit_x @ weights, score_x, score_x @ weights) > 0.999
    assert evaluate.linear_probe_r2(torch.randn(300, 8, generator=generator), fit_x @ weights, score_x,
                                    score_x @ weights) < 0.1
    assert evaluate.majority_accuracy(torch.tensor([3, 3, 1]), torch.tensor([3, 1, 1, 1])) == 0.25


class LabelledClips:
    """A stand-in loader that labels its clips: channel 0 holds the clip's label, channel 1 the frame's time."""

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator,
                       return_labels: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(2, (batch_size, 1), generator=generator)
        frames = torch.zeros(batch_size, length, 2, 4, 4)
        frames[:, :, 0] = labels[:, :, None, None].float()
        frames[:, :, 1] = torch.arange(length)[None, :, None, None].float()
        return (frames, labels) if return_labels else frames


class ChannelEncoders:
    """Stand-in encoders: the content is channel 0 of a frame (the label), the pose channel 1 (the time)."""

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x[:, 0].mean(dim=(1, 2))[:, None], [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1].mean(dim=(1, 2))[:, None]


def test_clip_labels_are_probed_on_disjoint_halves_of_the_test_clips() -> None:
    fit, score = evaluate.probe_sets(ChannelEncoders(), None, LabelledClips(), 60, 8,
                                     torch.Generator().manual_seed(0), CPU)
    assert len(fit.content) == len(score.content) == 60 and fit.pose_positions is None
    assert not torch.equal(fit.labels["label_0"], score.labels["label_0"])  # different clips
    results = evaluate.probe_metrics(fit, score)
    assert set(results) == {"label_0_from_content", "label_0_from_pose", "label_0_chance"}
    assert results["label_0_from_content"] == 1.0 and results["label_0_from_pose"] < 0.75


class CategoryImages:
    """A smallNORB-like stand-in: channels 0-4 one-hot the image's category (shifted by `shift`), channel 5 noise."""

    def __init__(self, shift: int) -> None:
        self.shift = shift

    def sequence_batch(self, batch_size: int, length: int, generator: torch.Generator,
                       return_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(5, (batch_size, 4), generator=generator)  # columns as NORB's LABEL_COLUMNS
        frames = torch.zeros(batch_size, length, 6, 4, 4)
        frames[:, :, :5] = torch.nn.functional.one_hot((labels[:, 0] + self.shift) % 5, 5)[:, None, :, None, None]
        frames[:, :, 5] = torch.rand(batch_size, length, 1, 1, generator=generator)
        return frames, labels


class SplitChannelEncoders:
    """Stand-in encoders: the content is channels 0-4 of a frame, the pose channel 5."""

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x[:, :5].mean(dim=(2, 3)), [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 5:].mean(dim=(2, 3))


def test_norb_category_probe_is_fitted_on_train_and_scored_on_test_images() -> None:
    results = evaluate.norb_category_probe(SplitChannelEncoders(), CategoryImages(0), CategoryImages(0), 200,
                                           torch.Generator().manual_seed(0), CPU)
    assert set(results) == {f"category_new_instances_{what}" for what in ("from_content", "from_pose", "chance")}
    assert results["category_new_instances_from_content"] == 1.0
    assert results["category_new_instances_from_pose"] < 0.4 and results["category_new_instances_chance"] < 0.4
    # Test images whose content says another category: a probe fitted on them would score 1.0.
    shifted = evaluate.norb_category_probe(SplitChannelEncoders(), CategoryImages(0), CategoryImages(1), 200,
                                           torch.Generator().manual_seed(0), CPU)
    assert shifted["category_new_instances_from_content"] == 0.0


class InkCorners:
    """Stand-in encoders: the first inked row and column of each colour channel, i.e. each digit's corner."""

    def corners(self, x: torch.Tensor) -> torch.Tensor:
        ink = (x > 0).float()
        return torch.cat([ink.amax(dim=3).argmax(dim=2), ink.amax(dim=2).argmax(dim=2)], dim=1).float()

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(self.corners(x), [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return self.corners(x)


def test_position_probes_target_the_frames_the_features_come_from() -> None:
    dataset = synthetic_mnist(max_step=20)
    fit, score = evaluate.probe_sets(InkCorners(), dataset, dataset, 80, 20, torch.Generator().manual_seed(0), CPU)
    assert set(fit.labels) == {"digit_0", "digit_1"} and fit.pose_positions.shape == (80, 4)
    assert not torch.equal(fit.content_positions, fit.pose_positions)  # frame 0 and frame t differ
    results = evaluate.probe_metrics(fit, score)
    # Corners read off the frame match the targets, except where the front digit hides the other's corner.
    assert results["position_r2_from_pose"] > 0.9 and results["position_r2_from_content"] > 0.9
    swapped = evaluate.linear_probe_r2(fit.content, fit.pose_positions, score.content, score.pose_positions)
    assert swapped < 0.5  # frame 0's corners do not tell frame t's


def test_fresh_discriminator_finds_clip_identity_only_where_there_is_some() -> None:
    generator = torch.Generator().manual_seed(0)

    def poses(identity: bool) -> torch.Tensor:
        """Pose vectors (clips, 4 frames, 5): one vector per clip plus small noise, or independent per frame."""
        per_frame = torch.rand(300, 4, 5, generator=generator) * 2 - 1
        return torch.rand(300, 1, 5, generator=generator) * 2 - 1 + 0.01 * per_frame if identity else per_frame

    for identity, low, high in ((True, 0.9, 1.0), (False, 0.35, 0.65)):
        fresh = evaluate.train_fresh_discriminator(poses(identity), seed=0)
        test = poses(identity)
        accuracy = evaluate.discriminator_accuracy(fresh, discriminator_pairs(test[:, 0], test[:, 1], generator))
        assert low <= accuracy <= high, (identity, accuracy)


class CopyLastPredictor:
    """A stand-in pose LSTM: predicts the last observed frame for every future step."""

    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        return past[:, -1:].expand(-1, n_future, -1, -1, -1)


class BlankPredictor:
    """A stand-in pose LSTM that predicts blank frames."""

    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        return torch.zeros(past.shape[0], n_future, *past.shape[2:])


def test_prediction_metrics_compare_against_the_future_frames() -> None:
    dataset = synthetic_mnist()
    copy_last = evaluate.prediction_metrics(CopyLastPredictor(), dataset, 4, 3, 5, torch.Generator().manual_seed(0),
                                            CPU)
    for name in ("mse", "psnr", "ssim"):
        assert len(copy_last[name]) == 5 and copy_last[name] == copy_last["copy_last_" + name]
    assert copy_last["mse"][0] < copy_last["mse"][4]  # digits drift away from where they were last seen
    blank = evaluate.prediction_metrics(BlankPredictor(), dataset, 4, 3, 5, torch.Generator().manual_seed(0), CPU)
    future = dataset.sequence_batch(4, 8, torch.Generator().manual_seed(0))[:, 3:]
    expected = per_step(mse, torch.zeros_like(future), future).double()
    assert torch.allclose(torch.tensor(blank["mse"], dtype=torch.float64), expected)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory `run` holding a two-iteration DRNET checkpoint; its data root is `data` beside it."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    real = moving_mnist._torchvision_mnist
    with pytest.MonkeyPatch.context() as patch:  # conftest's no-download guard starts per test, after this
        patch.setattr(moving_mnist, "_torchvision_mnist", lambda root, train, download: real(root, train, False))
        main.main(["--max_iter", "2", "--batch_size", "4", "--save_iters", "2", "--save_dir", str(run),
                   "--data_root", str(run.parent / "data"), "--device", "cpu"])
    return run


def test_evaluate_command_writes_every_metric(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    main.main(["--evaluate", "--save_dir", str(trained_run), *EVAL_FLAGS])  # the data root is the run's
    out = capsys.readouterr().out
    results = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert set(results) == {"checkpoint", "kind", "iteration", "dataset", "seed", "max_step", "eval_clips",
                            "eval_steps", "skipped", "reconstruction", "swap", "leakage", "probes"}
    assert results["checkpoint"] == str(checkpoint_path(trained_run)) and results["iteration"] == 2
    assert set(results["reconstruction"]) == {"mse", "psnr", "ssim", "copy_content_frame_mse"}
    assert set(results["swap"]) == {"mse", "pose_frame_mse", "content_frame_mse", "improvement_over_pose_frame"}
    assert set(results["leakage"]) == {"trained_discriminator_accuracy", "fresh_discriminator_accuracy",
                                       "fresh_discriminator_train_accuracy"}
    assert set(results["probes"]) == {f"digit_{n}_{what}" for n in (0, 1) for what in ("from_content", "from_pose",
                                                                                         "chance")} | {
        "position_r2_from_pose", "position_r2_from_content"}
    assert set(results["skipped"]) == {"prediction"}
    for part in ("reconstruction", "swap", "leakage", "probes"):
        assert all(isinstance(v, float) for v in results[part].values())
    assert 0 <= results["leakage"]["trained_discriminator_accuracy"] <= 1
    for row in ("reconstruction MSE", "swap           MSE to true swap", "leakage", "digit 1 from pose"):
        assert row in out
    assert (trained_run / "eval" / "summary.txt").read_text().splitlines()[1].startswith("part")
    assert (trained_run / "eval" / "swap_examples.png").is_file()

    # The same checkpoint and seed give the same numbers.
    overrides = {"eval_clips": 6, "eval_steps": 3}
    assert evaluate.evaluate(checkpoint_path(trained_run), overrides, CPU) == results


def test_lstm_checkpoint_gets_prediction_curves(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    lstm_flags = ["--use_lstm", "True", "--save_dir", str(trained_run), "--data_root", str(trained_run.parent / "data")]
    main.main([*lstm_flags, "--max_iter", "1", "--batch_size", "2", "--save_iters", "1", "--n_past", "2",
               "--n_future", "2", "--rnn_size", "8", "--rnn_layers", "1", "--rollout_len", "2", "--device", "cpu"])
    capsys.readouterr()
    main.main(["--evaluate", *lstm_flags, *EVAL_FLAGS])  # the same flags as the LSTM run find its checkpoint
    eval_dir = trained_run / "lstm" / "eval"
    results = json.loads((eval_dir / "metrics.json").read_text())
    assert results["kind"] == "lstm" and "prediction" not in results["skipped"]
    assert {k: len(v) for k, v in results["prediction"].items()} == {
        f"{prefix}{name}": 3 for prefix in ("", "copy_last_") for name in ("mse", "psnr", "ssim")}
    assert results["prediction"]["mse"] != results["prediction"]["copy_last_mse"]
    assert (eval_dir / "prediction_curves.png").is_file()
    assert "SSIM at step 3" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_unusable_checkpoint_is_one_clear_error(trained_run: Path, tmp_path: Path, problem: str,
                                                capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    if problem == "corrupt":  # a checkpoint cut off half-way, as a crash during a copy leaves it
        whole = checkpoint_path(trained_run).read_bytes()
        checkpoint.write_bytes(whole[:len(whole) // 2])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--evaluate", "--checkpoint", str(checkpoint), *EVAL_FLAGS])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = "no checkpoint at" if problem == "missing" else "cannot read checkpoint"
    assert len(lines) == 1 and expected in lines[0] and str(checkpoint) in lines[0]
    assert not (tmp_path / "eval").exists()
