"""Linear probes of frozen content and pose vectors: the `probes` section of the evaluation.

Logistic-regression accuracy of each clip label from the content vector (the first frame of a window)
and from the pose vector (a random frame of it), next to `<label>_chance`, the accuracy of always
answering the most common class.
- Moving MNIST: `digit_<n>` is the class of digit n (drawn in colour channel n); probes are fitted on
  train-split clips and scored on test-split clips (unseen digit images). Ridge R^2 of the digits'
  top-left corners from the pose (at t, should be high) and from the content (at frame 0, should be low).
- KTH, smallNORB, SUNCG (`datasets.LabelledClips`): fitted on the test clips of one part of the
  identities (videos, toys, chairs) and scored on those of the other part, so that a probe cannot score
  by recognising a video or an object it was fitted on. The labels are the loader's `label_columns`.
  smallNORB adds the paper's Table 1 protocol (recalled; the paper's classifier may not have been linear):
  `category_new_instances_*`, the category (5 classes) of single images, fitted on train-split images and
  scored on test-split images, whose toys are other instances; content should score high, pose low.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datasets import ClipDataset, LabelledClips
from datasets.moving_mnist import MovingMNIST
from datasets.norb import NorbClips
from models import DRNet

EVAL_BATCH = 100  # frames per network call


class NothingToProbe(Exception):
    """The dataset allows no probe; the message says why."""


def in_batches(function: Callable[..., torch.Tensor], *inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`function` applied to aligned chunks of `inputs` moved to `device`; results concatenated on the CPU."""
    return torch.cat([function(*(x[start:start + EVAL_BATCH].to(device) for x in inputs)).cpu()
                      for start in range(0, len(inputs[0]), EVAL_BATCH)])


def content_vectors(model: DRNet, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Content vectors h_c (N, content_dim) of frames (N, C, S, S)."""
    return in_batches(lambda x: model.encode_content(x).h, frames, device=device)


def pose_vectors(model: DRNet, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pose vectors h_p (N, pose_dim) of frames (N, C, S, S)."""
    return in_batches(model.encode_pose, frames, device=device)


class ProbeData(NamedTuple):
    """Frozen features of clips and what the probes should read from them."""

    content: torch.Tensor  # (N, content_dim) of the first frame
    pose: torch.Tensor  # (N, pose_dim) of the second frame
    labels: dict[str, torch.Tensor]  # name -> (N,) class of each clip
    content_positions: torch.Tensor | None  # (N, 2 * digits) top-left corners at frame 0 (Moving MNIST)
    pose_positions: torch.Tensor | None  # (N, 2 * digits) top-left corners at frame t (Moving MNIST)
    identities: torch.Tensor | None  # (N,) the video, toy or chair of each clip (labelled loaders)


@torch.no_grad()
def mnist_probe_data(model: DRNet, dataset: MovingMNIST, n_clips: int, generator: torch.Generator,
                     device: torch.device) -> ProbeData:
    """Content of frame 0 and pose of a random frame t of new clips, the digits' classes and positions."""
    clips = dataset.sample_clips(n_clips, generator)
    later = torch.randint(dataset.max_step, (n_clips, 1), generator=generator)
    times = torch.cat([torch.zeros_like(later), later], dim=1)
    frames = dataset.render_clips(clips, times)
    positions = dataset.positions(clips, times).float()  # (N, D, 2 times, 2 coordinates)
    labels = {f"digit_{n}": dataset.labels[clips.digits[:, n]] for n in range(dataset.num_digits)}
    return ProbeData(content_vectors(model, frames[:, 0], device), pose_vectors(model, frames[:, 1], device),
                     labels, positions[:, :, 0].flatten(1), positions[:, :, 1].flatten(1), None)


@torch.no_grad()
def labelled_probe_data(model: DRNet, dataset: LabelledClips, n_clips: int, part: int, generator: torch.Generator,
                        device: torch.device) -> ProbeData:
    """Content of a window's first frame and pose of a random frame of it, for clips of one identity part."""
    batch = dataset.probe_batch(n_clips, generator, part)
    return ProbeData(content_vectors(model, batch.frames[:, 0], device),
                     pose_vectors(model, batch.frames[:, 1], device),
                     {name: batch.labels[:, i] for i, name in enumerate(dataset.label_columns)}, None, None,
                     batch.identities)


def linear_probe_accuracy(fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor,
                          score_y: torch.Tensor) -> float:
    """Test accuracy of a logistic regression on standardised features fitted to (fit_x, fit_y)."""
    if len(torch.unique(fit_y)) < 2:  # one class only: the probe can do no better than answering it
        return (score_y == fit_y[0]).float().mean().item()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    probe.fit(fit_x.double().numpy(), fit_y.numpy())
    return float(probe.score(score_x.double().numpy(), score_y.numpy()))


def linear_probe_r2(fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor, score_y: torch.Tensor) -> float:
    """Test R^2 (averaged over target columns) of a ridge regression on standardised features."""
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    probe.fit(fit_x.double().numpy(), fit_y.double().numpy())
    return float(probe.score(score_x.double().numpy(), score_y.double().numpy()))


def majority_accuracy(fit_y: torch.Tensor, score_y: torch.Tensor) -> float:
    """Accuracy of always answering the most common class of the fitting labels: the chance level."""
    values, counts = torch.unique(fit_y, return_counts=True)
    return (score_y == values[counts.argmax()]).float().mean().item()


def probe_metrics(fit: ProbeData, score: ProbeData) -> dict[str, float]:
    """Label accuracies from content and from pose (with chance), and position R^2 when positions exist."""
    results = {}
    for name, labels in fit.labels.items():
        results[f"{name}_from_content"] = linear_probe_accuracy(fit.content, labels, score.content,
                                                                score.labels[name])
        results[f"{name}_from_pose"] = linear_probe_accuracy(fit.pose, labels, score.pose, score.labels[name])
        results[f"{name}_chance"] = majority_accuracy(labels, score.labels[name])
    if fit.pose_positions is not None:
        results["position_r2_from_pose"] = linear_probe_r2(fit.pose, fit.pose_positions, score.pose,
                                                           score.pose_positions)
        results["position_r2_from_content"] = linear_probe_r2(fit.content, fit.content_positions, score.content,
                                                              score.content_positions)
    return results


@torch.no_grad()
def norb_category_probe(model: DRNet, train_set: LabelledClips, test_set: LabelledClips, n_images: int,
                        generator: torch.Generator, device: torch.device) -> dict[str, float]:
    """Category of single smallNORB images from content and from pose: fitted on train, scored on test toys."""
    fit_and_score = []
    for dataset in (train_set, test_set):
        batch = dataset.probe_batch(n_images, generator)
        images = batch.frames[:, 0]
        category = batch.labels[:, dataset.label_columns.index("category")]
        fit_and_score.append(ProbeData(content_vectors(model, images, device), pose_vectors(model, images, device),
                                       {"category_new_instances": category}, None, None, batch.identities))
    return probe_metrics(*fit_and_score)


def probe_sets(model: DRNet, train_set: ClipDataset, test_set: ClipDataset, n_clips: int,
               generator: torch.Generator, device: torch.device) -> tuple[ProbeData, ProbeData]:
    """(fit, score) features for the probes; NothingToProbe when the dataset has no labels or one identity."""
    if isinstance(test_set, MovingMNIST):
        return (mnist_probe_data(model, train_set, n_clips, generator, device),
                mnist_probe_data(model, test_set, n_clips, generator, device))
    if not isinstance(test_set, LabelledClips):
        raise NothingToProbe(f"the {type(test_set).__name__} loader gives no labels")
    if test_set.num_identities < 2:
        raise NothingToProbe(f"the test split shows {test_set.num_identities} identity (video, toy or chair): "
                             "no two parts that share none")
    return tuple(labelled_probe_data(model, test_set, n_clips, part, generator, device) for part in (0, 1))


def probe_results(model: DRNet, train_set: ClipDataset, test_set: ClipDataset, n_clips: int,
                  generator: torch.Generator, device: torch.device) -> dict[str, float]:
    """Every probe the dataset allows, `n_clips` clips per set; NothingToProbe says why there is none."""
    results = probe_metrics(*probe_sets(model, train_set, test_set, n_clips, generator, device))
    if isinstance(test_set, NorbClips):  # its draws follow the other probes' on the same generator
        results.update(norb_category_probe(model, train_set, test_set, n_clips, generator, device))
    return results
