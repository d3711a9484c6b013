"""models.py, the VGG16 and ResNet-18 networks: shapes, ranges, depth, init, gradients, and the combinations
datasets name."""

import pytest
import torch
import torch.nn.functional as F

from datasets.registry import DATASETS
from models import ENCODERS, DRNet, ResNet18Encoder, VGG16Decoder, VGG16Encoder

# (channels, resolution) of the skips every encoder returns, finest first (models.py docstring).
SKIPS = {64: [(64, 32), (128, 16), (256, 8), (512, 4)],
         128: [(64, 64), (128, 32), (256, 16), (512, 8), (512, 4)]}


def networks(model: DRNet) -> list[torch.nn.Module]:
    """The networks of a DRNet that render frames (the scene discriminator is trained apart)."""
    return [model.content_encoder, model.pose_encoder, model.decoder]


def convs(module: torch.nn.Module, kernel_size: int) -> list[torch.nn.Conv2d]:
    """The Conv2d layers of `module` with a square kernel of `kernel_size`."""
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (kernel_size,) * 2]


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@torch.no_grad()
def test_encoder_shapes_and_range(name, size, channels):
    h, skips = ENCODERS[name](channels, 7, size)(torch.rand(2, channels, size, size))
    assert h.shape == (2, 7)
    assert h.abs().max() <= 1  # tanh
    assert [tuple(s.shape) for s in skips] == [(2, c, r, r) for c, r in SKIPS[size]]


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("use_skip", [False, True])
@torch.no_grad()
def test_vgg_decoder_shapes_range_and_skips(size, channels, use_skip):
    torch.manual_seed(0)
    decoder = VGG16Decoder(channels, 16, 5, size, use_skip).eval()
    h_c, h_p = torch.rand(2, 16) * 2 - 1, torch.rand(2, 5) * 2 - 1
    skips = [torch.rand(2, c, r, r) for c, r in SKIPS[size]] if use_skip else None
    frames = decoder(h_c, h_p, skips)
    assert frames.shape == (2, channels, size, size)
    assert 0 <= frames.min() and frames.max() <= 1  # sigmoid
    if use_skip:  # the skips are used, not merely accepted
        assert not torch.allclose(frames, decoder(h_c, h_p, [torch.rand_like(s) for s in skips]))


@pytest.mark.parametrize("size,vgg_convs", [(64, 10), (128, 13)])
def test_depths_follow_vgg16_and_resnet18(size, vgg_convs):
    # VGG16's 13 3x3 convs at 128 px (one 512 block fewer at 64 px), mirrored one for one by the decoder
    # (its last conv renders the frame); ResNet-18: stem + 2 BasicBlocks of 2 convs per stage.
    assert len(convs(VGG16Encoder(1, 8, size), 3)) == vgg_convs
    assert len(convs(VGG16Decoder(1, 8, 5, size, use_skip=True), 3)) == vgg_convs
    stages = 4 if size == 64 else 5
    assert len(convs(ResNet18Encoder(1, 8, size), 3)) == 1 + 4 * stages


@pytest.mark.parametrize("dataset", ["kth", "suncg", "norb"])
@torch.no_grad()
def test_dataset_networks_render_frames(dataset):
    config = DATASETS[dataset]
    size, channels = config["image_width"], config["channels"]
    model = DRNet(config)
    x_content, x_pose = torch.rand(2, 2, channels, size, size)
    frames = model(x_content, x_pose)
    assert frames.shape == (2, channels, size, size)
    assert 0 <= frames.min() and frames.max() <= 1
    assert model.encode_content(x_content).h.abs().max() <= 1


def test_gradients_reach_every_parameter():
    # kth's networks hold every new class: VGG16 content encoder and skip decoder, ResNet-18 pose encoder.
    torch.manual_seed(0)
    model = DRNet({**DATASETS["kth"], "image_width": 64})  # 64 px keeps the test fast
    # Batch 4, not 2: BatchNorm over two 1x1 vectors outputs about +-1 whatever its input, starving the encoders.
    x_content, x_pose = torch.rand(2, 4, 1, 64, 64)
    F.mse_loss(model(x_content, x_pose), x_pose).backward()
    starved = [f"{part}.{name}" for part, net in zip(("content", "pose", "decoder"), networks(model), strict=True)
               for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert starved == []


# Pairs no dataset uses yet: the shared skip shapes let any content encoder feed any skip decoder.
@pytest.mark.parametrize("content_encoder,decoder",
                         [("resnet18", "dcgan"), ("vgg16", "dcgan"), ("resnet18", "vgg16"), ("dcgan", "vgg16")])
@torch.no_grad()
def test_content_encoders_feed_other_skip_decoders(content_encoder, decoder):
    config = {"image_width": 64, "channels": 1, "content_dim": 8, "pose_dim": 3, "use_skip": True,
              "content_encoder": content_encoder, "pose_encoder": "dcgan", "decoder": decoder}
    model = DRNet(config)
    assert model(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_init_weights_reaches_the_new_networks():
    torch.manual_seed(0)
    model = DRNet({**DATASETS["kth"], "image_width": 64})
    for net in networks(model):
        for conv in convs(net, 3) + convs(net, 1):
            if conv.weight.numel() >= 10_000:  # enough weights for a tight estimate of the std
                assert abs(conv.weight.std().item() - 0.02) < 0.002
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(0.005 < m.weight.std().item() < 0.04 and torch.all(m.bias == 0) for m in norms)
    assert torch.all(model.decoder.out[-2].bias == 0)


@pytest.mark.parametrize("size", [32, 96])
def test_unsupported_size_is_a_clear_error(size):
    for build in (lambda: VGG16Encoder(3, 8, size), lambda: ResNet18Encoder(3, 8, size),
                  lambda: VGG16Decoder(3, 8, 5, size, True)):
        with pytest.raises(ValueError, match=f"unsupported image size {size}"):
            build()
