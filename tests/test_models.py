"""models.py: the DCGAN encoder/decoder, scene discriminator, weight init, and the DRNet encode/decode API."""

import pytest
import torch

from models import Content, Decoder, DRNet, Encoder, SceneDiscriminator, init_weights


def mnist_config(**changes):
    """A resolved DRNET config for the DCGAN networks."""
    config = {"image_width": 64, "channels": 3, "content_dim": 16, "pose_dim": 5, "use_skip": False,
              "content_encoder": "dcgan", "pose_encoder": "dcgan", "decoder": "dcgan"}
    return {**config, **changes}


@pytest.mark.parametrize("size,stages", [(64, 4), (128, 5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_shapes(size, stages, channels):
    encoder = Encoder(channels, 7, size)
    h, skips = encoder(torch.rand(2, channels, size, size))
    assert h.shape == (2, 7)
    assert h.abs().max() <= 1  # tanh
    expected = [(2, c, size // 2 ** (i + 1), size // 2 ** (i + 1))
                for i, c in enumerate([64, 128, 256, 512, 512][:stages])]
    assert [tuple(s.shape) for s in skips] == expected
    assert skips[-1].shape[-1] == 4


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("use_skip", [False, True])
def test_decoder_shapes_and_range(size, use_skip):
    encoder = Encoder(3, 16, size)
    decoder = Decoder(3, 16, 5, size, use_skip)
    h_c, skips = encoder(torch.rand(2, 3, size, size))
    frames = decoder(h_c, torch.rand(2, 5) * 2 - 1, skips if use_skip else None)
    assert frames.shape == (2, 3, size, size)
    assert 0 <= frames.min() and frames.max() <= 1


def test_skip_decoder_needs_skips():
    decoder = Decoder(3, 16, 5, 64, use_skip=True)
    with pytest.raises(ValueError, match="skip"):
        decoder(torch.rand(2, 16), torch.rand(2, 5), [])


@pytest.mark.parametrize("size", [32, 96, 256])
def test_unsupported_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match=f"unsupported image size {size}"):
        Encoder(3, 8, size)
    with pytest.raises(ValueError, match="64 or 128"):
        Decoder(3, 8, 5, size)


def test_scene_discriminator_returns_one_logit_per_pair():
    discriminator = SceneDiscriminator(5)
    assert discriminator(torch.rand(7, 5), torch.rand(7, 5)).shape == (7,)
    layers = [m for m in discriminator.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(10, 100), (100, 100), (100, 1)]


def test_init_weights_follows_dcgan():
    torch.manual_seed(0)
    model = DRNet(mnist_config(content_dim=128))
    conv = model.content_encoder.stages[2][0].weight
    assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 1e-3
    norm = model.decoder.stages[0][1]
    assert abs(norm.weight.mean().item() - 1) < 0.01 and 0.005 < norm.weight.std().item() < 0.04
    assert torch.all(norm.bias == 0)
    assert torch.all(model.scene_discriminator.net[0].bias == 0)
    assert torch.all(model.decoder.out[0].bias == 0)


@pytest.mark.parametrize("use_skip", [False, True])
def test_drnet_api_mixes_content_and_pose_of_different_clips(use_skip):
    torch.manual_seed(0)
    model = DRNet(mnist_config(use_skip=use_skip)).eval()
    clip_a, clip_b = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    content = model.encode_content(clip_a)
    assert isinstance(content, Content) and content.h.shape == (3, 16)
    assert len(content.skips) == (4 if use_skip else 0)
    pose = model.encode_pose(clip_b)
    assert pose.shape == (3, 5)
    swapped = model.decode(content, pose)
    assert swapped.shape == (3, 3, 64, 64)
    assert torch.allclose(swapped, model(clip_a, clip_b))
    # The pose of another clip changes the picture; the same pose reproduces it.
    assert not torch.allclose(swapped, model.decode(content, model.encode_pose(clip_a)))


def test_init_weights_ignores_layers_without_parameters():
    relu = torch.nn.ReLU()
    init_weights(relu)  # must not fail on modules it does not initialise
    linear = torch.nn.Linear(3, 4)
    init_weights(linear)
    assert torch.all(linear.bias == 0)


def test_content_head_without_affine_has_no_scale_and_sphere_codes_have_unit_norm():
    model = DRNet(mnist_config(content_affine=False, normalize=True)).eval()
    head_norm = model.content_encoder.head[1]
    assert head_norm.weight is None and head_norm.bias is None  # nothing the similarity loss could shrink
    assert model.pose_encoder.head[1].weight is not None  # the pose head keeps the authors' BatchNorm
    frames = torch.rand(3, 3, 64, 64)
    assert torch.allclose(model.encode_content(frames).h.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.encode_pose(frames).norm(dim=1), torch.ones(3), atol=1e-5)


def test_config_without_head_options_builds_the_authors_heads():
    """Checkpoints written before the head options existed rebuild with a learnable scale and no sphere."""
    model = DRNet(mnist_config()).eval()
    assert model.content_encoder.head[1].weight is not None
    h = model.encode_content(torch.rand(4, 3, 64, 64)).h
    assert not torch.allclose(h.norm(dim=1), torch.ones(4))
