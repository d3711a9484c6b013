"""train_drnet.py's DRNET losses against hand-computed values, discriminator pairs, and what each step detaches."""

import math

import pytest
import torch

from evaluation.transfer import invariance_ratio
from models import DRNet, discriminator_pairs
from train_drnet import (
    adversarial_loss,
    drnet_loss,
    make_optimizers,
    report_test_clips,
    similarity_loss,
    train_step,
)

CONFIG = {"image_width": 64, "channels": 3, "content_dim": 8, "pose_dim": 3, "use_skip": False,
          "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan", "lr": 0.002, "beta1": 0.5}


def test_similarity_loss_value_and_fixed_target():
    h_c1 = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    h_c2 = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = similarity_loss(h_c1, h_c2)
    assert math.isclose(loss.item(), (1 + 4 + 0 + 4) / 4)  # mean over elements
    loss.backward()
    assert h_c2.grad is None  # stop-gradient on the target
    assert torch.allclose(h_c1.grad, torch.tensor([[0.5, 1.0], [0.0, -1.0]]))


def test_adversarial_loss_is_cross_entropy_against_one_half():
    logits = torch.tensor([0.0, 2.0])
    p = 1 / (1 + math.exp(-2.0))
    expected = (math.log(2) + (-0.5 * math.log(p) - 0.5 * math.log(1 - p))) / 2
    assert math.isclose(adversarial_loss(logits).item(), expected, rel_tol=1e-6)
    assert math.isclose(adversarial_loss(torch.zeros(5)).item(), math.log(2), rel_tol=1e-6)  # its minimum


def test_total_loss_weights_similarity_and_adversarial_terms_not_reconstruction():
    rec, sim, adv = torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.7)
    assert math.isclose(drnet_loss(rec, sim, adv, alpha=3.0, beta=0.1).item(), 0.5 + 6.0 + 0.07, rel_tol=1e-6)


def test_discriminator_pairs_same_half_and_shuffled_half():
    h_p1 = torch.arange(10.0)[:, None].repeat(1, 3)
    h_p2 = 100 + torch.arange(10.0)[:, None].repeat(1, 3)
    for seed in range(20):
        first, second, labels = discriminator_pairs(h_p1, h_p2, torch.Generator().manual_seed(seed))
        assert torch.equal(first, h_p1)
        assert torch.equal(labels, torch.tensor([1.0] * 5 + [0.0] * 5))
        assert torch.equal(second[:5], h_p2[:5])  # same clip
        partners = (second[5:, 0] - 100).long()
        assert torch.all(partners != torch.arange(5, 10))  # never paired with itself
        assert set(partners.tolist()) <= set(range(10))


def test_discriminator_pairs_odd_batch():
    first, second, labels = discriminator_pairs(torch.rand(5, 2), torch.rand(5, 2), torch.Generator().manual_seed(0))
    assert labels.tolist() == [1, 1, 0, 0, 0] and second.shape == (5, 2)


def test_train_step_gradient_flow():
    torch.manual_seed(0)
    model = DRNet(CONFIG)
    optimizers = make_optimizers(model, CONFIG)
    calls = {"discriminator": 0, "pose": 0}

    def count(name):
        def hook(grad):
            calls[name] += 1
        return hook

    model.scene_discriminator.net[0].weight.register_hook(count("discriminator"))
    model.pose_encoder.head[0].weight.register_hook(count("pose"))
    frames = torch.rand(4, 6, 3, 64, 64, requires_grad=True)
    values = train_step(model, optimizers, frames, alpha=1.0, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert set(values) == {"rec", "sim", "adv", "disc_loss", "disc_acc"}
    # One backward pass reaches the discriminator: its own step. The main step leaves it alone.
    assert calls["discriminator"] == 1
    # The pose encoder gets gradient only from the main step (reconstruction and adversarial terms).
    assert calls["pose"] == 1
    x_c1, x_c2, x_p1, x_p2 = frames.grad
    assert x_c1.abs().sum() > 0 and x_p1.abs().sum() > 0
    assert torch.all(x_c2 == 0) and torch.all(x_p2 == 0)  # content target and second pose are fixed


def test_train_step_updates_every_network():
    torch.manual_seed(0)
    model = DRNet(CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, make_optimizers(model, CONFIG), torch.rand(4, 6, 3, 64, 64), 1.0, 0.1,
               torch.Generator().manual_seed(0))
    after = model.state_dict()
    for prefix in ("content_encoder", "pose_encoder", "decoder", "scene_discriminator"):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def test_content_spread_reports_a_collapsed_content_vector(tmp_path):
    torch.manual_seed(0)
    model = DRNet(CONFIG)
    frames, clips = torch.rand(4, 6, 3, 64, 64), torch.rand(3, 4, 3, 64, 64)
    healthy = report_test_clips(model, frames, clips, tmp_path, 1)
    assert healthy["test_content_spread"] > 1e-3 and healthy["test_rec_mse"] > 0
    torch.nn.init.zeros_(model.content_encoder.head[1].weight)  # every clip gets the same content: tanh(bias)
    collapsed = report_test_clips(model, frames, clips, tmp_path, 2)
    assert collapsed["test_content_spread"] == 0
    assert (tmp_path / "analogy_0000002.png").is_file() and (tmp_path / "reconstruction_0000002.png").is_file()


def test_content_ratio_is_scale_free_and_zero_for_a_time_invariant_content():
    first, second = torch.randn(50, 8), torch.randn(50, 8)
    assert invariance_ratio(first, second) == pytest.approx(invariance_ratio(0.01 * first, 0.01 * second), rel=1e-4)
    assert invariance_ratio(first, first) == 0  # the same content at both times
    assert 0.9 < invariance_ratio(first, second) < 1.1  # unrelated frames: time changes it as much as the clip
    clip = torch.randn(50, 8)
    assert 0.05 < invariance_ratio(clip + 0.3 * first, clip + 0.3 * second) < 0.12  # 0.09 / 1.09


def test_periodic_content_transfer_is_zero_when_the_decoder_ignores_the_content(tmp_path):
    from datasets.moving_mnist import MovingMNIST
    from evaluation.transfer import swap_set

    torch.manual_seed(0)
    model = DRNet(CONFIG)
    with torch.no_grad():  # eval-mode BatchNorm of fresh networks shrinks every signal: make them sensitive
        model.content_encoder.head[1].running_var.fill_(1e-4)
        for layer in model.decoder.modules():
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.mul_(25)
    dataset = MovingMNIST(torch.randint(0, 255, (20, 28, 28), dtype=torch.uint8), torch.arange(20) % 10)
    swaps = swap_set(dataset, 6, torch.Generator().manual_seed(0))
    frames, clips = torch.rand(4, 6, 3, 64, 64), torch.rand(3, 4, 3, 64, 64)
    used = report_test_clips(model, frames, clips, tmp_path, 1, swaps, slice(0, 2))["test_content_transfer"]
    assert abs(used) > 1e-4  # a fresh decoder's output depends on its content input
    with torch.no_grad():  # the decoder's first layer reads content channels first: zero their weights
        model.decoder.head[0].weight[:CONFIG["content_dim"]] = 0
    ignored = report_test_clips(model, frames, clips, tmp_path, 2, swaps, slice(0, 2))["test_content_transfer"]
    assert ignored == pytest.approx(0, abs=1e-6)
