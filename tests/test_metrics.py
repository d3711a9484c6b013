"""evaluation/metrics.py: exact values, agreement with scikit-image's SSIM, shapes and errors."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from evaluation import metrics


def _skimage_ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Reference SSIM per image of an (N, C, H, W) pair, with the settings metrics.ssim promises to match."""
    a = pred.double().numpy()
    b = target.double().numpy()
    return np.array(
        [
            structural_similarity(
                a[i],
                b[i],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=0,
            )
            for i in range(a.shape[0])
        ]
    )


def _structured(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Smooth sinusoidal patterns with edges, different per image and channel, in [0, 1]."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    images = torch.empty(n, c, h, w, dtype=torch.float64)
    for i in range(n):
        for k in range(c):
            wave = torch.sin(xx / (3 + i + k)) * torch.cos(yy / (5 + 2 * k))
            square = ((xx > w / 3) & (yy < h / 2)).double()
            images[i, k] = 0.5 + 0.3 * wave + 0.2 * square * (-1) ** k
    return images.clamp(0, 1)


def _noisy(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """x plus Gaussian noise, clipped back to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0, 1)


def test_identical_images_are_perfect():
    x = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(metrics.mse(x, x), torch.zeros(3))
    assert torch.all(torch.isposinf(metrics.psnr(x, x)))
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3), atol=1e-6, rtol=0)


def test_mse_and_psnr_of_constant_images():
    zeros = torch.zeros(2, 1, 8, 8)
    tenth = torch.full((2, 1, 8, 8), 0.1)
    torch.testing.assert_close(metrics.mse(zeros, tenth), torch.full((2,), 0.01))
    torch.testing.assert_close(metrics.psnr(zeros, tenth), torch.full((2,), 20.0))
    # The same error on a 0..255 scale is the same PSNR once data_range says so.
    torch.testing.assert_close(
        metrics.psnr(zeros * 255, tenth * 255, data_range=255.0), torch.full((2,), 20.0)
    )


def test_mse_averages_over_channels_and_pixels():
    pred = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 2, 4, 4)
    target[0, 1, 0, 0] = 1.0  # one wrong pixel out of 32
    torch.testing.assert_close(metrics.mse(pred, target), torch.tensor([1 / 32]))
    torch.testing.assert_close(metrics.psnr(pred, target), torch.tensor([10 * math.log10(32)]))


def test_psnr_eps_caps_only_exact_images():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    pair = torch.stack([x[0], x[1]])  # image 0 exact, image 1 wrong
    pred = torch.stack([x[0], x[0]])
    capped = metrics.psnr(pred, pair, eps=1e-10)
    torch.testing.assert_close(capped[0], torch.tensor(100.0))
    torch.testing.assert_close(capped[1], metrics.psnr(pred, pair)[1])
    with pytest.raises(ValueError, match="eps"):
        metrics.psnr(x, x, eps=-1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["random", "bright", "structured"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_skimage(channels: int, kind: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(channels)
    # Non-square on purpose, so a height/width mix-up cannot pass.
    shape = (3, channels, 37, 52)
    if kind == "random":
        target = torch.rand(shape, generator=gen, dtype=torch.float64)
    elif kind == "bright":
        # Near-constant bright images stress float32 cancellation in E[x^2] - E[x]^2.
        target = 0.9 + 0.1 * torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        target = _structured(*shape)
    pred = _noisy(target, 0.05, seed=7)
    ours = metrics.ssim(pred.to(dtype), target.to(dtype))
    assert ours.dtype == dtype
    expected = _skimage_ssim(pred, target)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-5)


def test_ssim_matches_skimage_at_window_size():
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 11, 11, generator=gen, dtype=torch.float64)
    pred = _noisy(target, 0.1, seed=4)
    np.testing.assert_allclose(metrics.ssim(pred, target).numpy(), _skimage_ssim(pred, target), atol=1e-10)


def test_ssim_decreases_with_shift():
    image = _structured(1, 1, 48, 48)
    scores = [metrics.ssim(torch.roll(image, shifts=s, dims=-1), image).item() for s in (0, 1, 2, 4)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))
    assert scores[1] < 1.0


def test_ssim_is_symmetric():
    gen = torch.Generator().manual_seed(5)
    a = torch.rand(4, 3, 24, 24, generator=gen)
    b = torch.rand(4, 3, 24, 24, generator=gen)
    torch.testing.assert_close(metrics.ssim(a, b), metrics.ssim(b, a))


def test_ssim_data_range_rescales():
    target = _structured(2, 3, 20, 20)
    pred = _noisy(target, 0.1, seed=6)
    torch.testing.assert_close(
        metrics.ssim(pred * 255, target * 255, data_range=255.0), metrics.ssim(pred, target)
    )


@pytest.mark.parametrize("fn", [metrics.mse, metrics.psnr, metrics.ssim])
def test_shape_mismatch_raises(fn):
    a = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        fn(a, torch.rand(2, 1, 16, 16))
    # Broadcastable shapes are still a mismatch.
    with pytest.raises(ValueError, match="shapes differ"):
        fn(a, torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("fn", [metrics.mse, metrics.psnr, metrics.ssim])
def test_bad_inputs_raise(fn):
    with pytest.raises(ValueError, match="C, H, W"):
        fn(torch.rand(16, 16), torch.rand(16, 16))
    ints = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="floating-point"):
        fn(ints, ints)


@pytest.mark.parametrize("size", [(10, 32), (32, 10)])
def test_ssim_rejects_images_smaller_than_window(size: tuple[int, int]):
    x = torch.rand(1, 1, *size)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x, x)


@pytest.mark.parametrize("fn", [metrics.mse, metrics.psnr, metrics.ssim])
def test_leading_dims_are_kept(fn):
    gen = torch.Generator().manual_seed(8)
    pred = torch.rand(2, 3, 1, 16, 16, generator=gen)
    target = torch.rand(2, 3, 1, 16, 16, generator=gen)
    out = fn(pred, target)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(6), fn(pred.reshape(6, 1, 16, 16), target.reshape(6, 1, 16, 16)))
    # A single (C, H, W) image gives a scalar equal to its entry in the batch.
    single = fn(pred[1, 2], target[1, 2])
    assert single.shape == ()
    torch.testing.assert_close(single, out[1, 2])


@pytest.mark.parametrize("fn", [metrics.mse, partial(metrics.psnr, eps=1e-10), metrics.ssim])
def test_per_step_averages_over_batch(fn):
    gen = torch.Generator().manual_seed(9)
    pred = torch.rand(4, 5, 3, 16, 16, generator=gen)
    target = torch.rand(4, 5, 3, 16, 16, generator=gen)
    curve = metrics.per_step(fn, pred, target)
    assert curve.shape == (5,)
    expected = torch.stack([fn(pred[:, t], target[:, t]).mean() for t in range(5)])
    torch.testing.assert_close(curve, expected)


def test_per_step_rejects_non_sequences():
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        metrics.per_step(metrics.mse, x, x)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_openstl_matches_skimage_legacy_float_defaults(channels: int):
    # OpenSTL calls structural_similarity on float frames without data_range; scikit-image <= 0.19 then used a
    # 7x7 uniform window, sample covariance and the float dtype's range 2. Today those settings are explicit.
    target = _structured(3, channels, 32, 40)
    pred = torch.cat([_noisy(target[:2], 0.15, seed=1), 1 - target[2:]])
    expected = np.array([structural_similarity(p, t, win_size=7, gaussian_weights=False, data_range=2,
                                               use_sample_covariance=True, channel_axis=0)
                         for p, t in zip(pred.numpy(), target.numpy(), strict=True)])
    ours = metrics.ssim_openstl(pred.float(), target.float())
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=2e-6)
    assert torch.all(ours > metrics.ssim(pred.float(), target.float()))  # range 2: larger constants, higher SSIM


def test_ssim_openstl_clips_the_prediction_like_openstl():
    target = _structured(1, 1, 16, 16)
    over = target + 0.5  # clipped to [0, 1] before scoring, as OpenSTL's metric does
    torch.testing.assert_close(metrics.ssim_openstl(over, target), metrics.ssim_openstl(over.clamp(0, 1), target))
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim_openstl(torch.rand(1, 1, 6, 9), torch.rand(1, 1, 6, 9))
