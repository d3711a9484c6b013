"""Per-image quality metrics (MSE, PSNR, SSIM) for predicted video frames, in plain torch.

All metrics take float images in [0, 1] shaped (..., C, H, W), compute on whatever device the
inputs live on, and return one value per image, shaped like the leading dims (so (N, C, H, W)
gives (N,) and (B, T, C, H, W) gives (B, T)).  Shapes must match exactly: broadcasting a
prediction against a target is always a caller bug here, so it raises instead.

SSIM follows Wang et al. 2004 and is numerically the same as scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0, channel_axis=0)``: an 11-tap Gaussian window (sigma 1.5), population
statistics, K1=0.01, K2=0.03, the SSIM map averaged only over positions where the whole window
fits inside the image, then averaged over channels.

``ssim_openstl`` is the SSIM behind OpenSTL's published tables: OpenSTL's ``metric`` calls scikit-image's
``structural_similarity`` on float frames without ``data_range``, which scikit-image <= 0.19 filled in from
the dtype (2 for floats, taken to span [-1, 1]) with its defaults of then: a 7x7 uniform window and the
sample covariance (N / (N - 1)). scikit-image >= 0.20 refuses float images without ``data_range``, so the
same figure today is ``structural_similarity(..., win_size=7, gaussian_weights=False, data_range=2,
use_sample_covariance=True, channel_axis=0)``. A range of 2 makes the stabilising constants C1 and C2 four
times larger than for frames in [0, 1], so on the same frames it reads higher than ``ssim``.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
OPENSTL_WINDOW, OPENSTL_DATA_RANGE = 7, 2.0  # scikit-image <= 0.19 on float frames without data_range


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless pred and target are same-shaped float image stacks (..., C, H, W)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected images shaped (..., C, H, W), got shape {tuple(pred.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        # Integer images would silently be on a 0..255 scale that data_range=1.0 does not describe.
        raise ValueError(f"expected floating-point images in [0, 1], got {pred.dtype} and {target.dtype}")


def _fp32(images: torch.Tensor) -> torch.Tensor:
    """The images in at least fp32: bf16 frames (--amp) are measured in fp32, float64 ones stay float64."""
    return images if images.dtype == torch.float64 else images.float()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (mean over C, H, W), shaped like the leading dims."""
    _check_pair(pred, target)
    return (_fp32(pred) - _fp32(target)).pow(2).mean(dim=(-3, -2, -1))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, eps: float = 0.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 * log10(data_range**2 / max(MSE, eps)).

    With the default ``eps=0`` identical images give +inf, which is the exact value but makes any
    mean over images infinite.  For finite aggregate reports pass a small ``eps`` (e.g. 1e-10 caps
    PSNR at 100 dB for data_range=1); it only changes images whose MSE is below ``eps``.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    err = mse(pred, target).clamp_min(eps)
    return 10.0 * torch.log10(data_range**2 / err)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of length SSIM_WINDOW and std SSIM_SIGMA."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    taps = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004), shaped like the leading dims."""
    _check_pair(pred, target)
    with torch.autocast(pred.device.type, enabled=False):  # under --amp the filters would otherwise run in bf16
        pred, target = _fp32(pred), _fp32(target)
        return _ssim(pred, target, data_range, _gaussian_window(pred.dtype, pred.device), 1.0)


def ssim_openstl(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image as OpenSTL's tables report it: 7x7 uniform window, data range 2, sample covariance.

    Like OpenSTL, the prediction is clipped to [0, 1] first (the target is not).
    """
    _check_pair(pred, target)
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _fp32(pred).clamp(0, 1), _fp32(target)
        taps = torch.full((OPENSTL_WINDOW,), 1 / OPENSTL_WINDOW, dtype=pred.dtype, device=pred.device)
        points = OPENSTL_WINDOW**2
        return _ssim(pred, target, OPENSTL_DATA_RANGE, taps, points / (points - 1))


def _ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float, taps: torch.Tensor,
          cov_norm: float) -> torch.Tensor:
    """SSIM of two checked image stacks in at least fp32 with a separable window of 1-D `taps`.

    `cov_norm` scales the local (co)variances: 1 for population statistics, N / (N - 1) for sample ones.
    """
    window = len(taps)
    *lead, channels, height, width = pred.shape
    if height < window or width < window:
        raise ValueError(f"SSIM needs images at least {window}x{window} (its window size), got {height}x{width}")
    x = pred.reshape(-1, 1, height, width)
    y = target.reshape(-1, 1, height, width)
    # SSIM is invariant to adding the same constant to both images, but the variance estimate
    # E[x^2] - E[x]^2 loses precision when the images sit far from zero.  Centring each
    # channel on the pair's mean keeps float32 within ~1e-6 of scikit-image's result; the
    # local means then only need the offset added back (the window sums to one).
    offset = 0.5 * (x.mean(dim=(-2, -1), keepdim=True) + y.mean(dim=(-2, -1), keepdim=True))
    x = x - offset
    y = y - offset

    # All five local statistics go through one pair of 1-D convolutions: stacking them along the
    # batch axis with a single input channel is the depthwise filter, done in two cheap passes.
    # 'valid' convolution (no padding) yields exactly the interior that scikit-image averages
    # after cropping half a window from each border, so padding never affects the result.
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    stats = F.conv2d(stats, taps.view(1, 1, 1, window))
    stats = F.conv2d(stats, taps.view(1, 1, window, 1))
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5, dim=0)

    var_x = cov_norm * (e_xx - mu_x * mu_x)
    var_y = cov_norm * (e_yy - mu_y * mu_y)
    cov_xy = cov_norm * (e_xy - mu_x * mu_y)
    mu_x = mu_x + offset
    mu_y = mu_y + offset

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    per_channel = ssim_map.mean(dim=(-3, -2, -1))
    return per_channel.reshape(*lead, channels).mean(dim=-1)


def per_step(
    metric_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pred: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """Mean of a per-image metric over the batch at each time step: (B, T, C, H, W) -> (T,).

    Extra metric arguments go through ``functools.partial`` (e.g. ``partial(psnr, eps=1e-10)``
    keeps the curve finite when some predicted frames are exact).
    """
    if pred.dim() != 5:
        raise ValueError(f"expected sequences shaped (B, T, C, H, W), got shape {tuple(pred.shape)}")
    return metric_fn(pred, target).mean(dim=0)


# The evaluation's frame metrics, by the names its reports use.
PSNR_EPS = 1e-10  # caps PSNR at 100 dB so an exact frame cannot make a mean infinite
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-image metric: (..., C, H, W) pairs -> (...)
FRAME_METRICS: dict[str, Metric] = {"mse": mse, "psnr": partial(psnr, eps=PSNR_EPS), "ssim": ssim}
