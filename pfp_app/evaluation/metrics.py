"""Image/video quality metrics and small statistics for evaluating recall and generation.

Tensors are in [-1, 1] (so ``data_range=2``). Frames may be given as (3,H,W), (B,3,H,W)
or (3,T,H,W): every metric here works per 2-D plane or over all elements, so the
layout of the leading dimensions does not change the result.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054
_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies of ``pred``/``target`` after checking they match and have >= 3 dims."""
    p, t = torch.as_tensor(pred).detach().float(), torch.as_tensor(target).detach().float()
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {tuple(p.shape)} vs target {tuple(t.shape)}")
    if p.ndim < 3:
        raise ValueError(f"expected (3,H,W), (B,3,H,W) or (3,T,H,W), got {tuple(p.shape)}")
    return p, t


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB from the MSE over ALL elements (not a mean of per-frame PSNRs).

    Identical inputs give ``float('inf')``.
    """
    p, t = _pair(pred, target)
    return float(peak_signal_noise_ratio(p, t, data_range=data_range))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM (Gaussian window, sigma 1.5, 11x11) over every channel of every frame.

    Like the reference implementation and ``skimage.metrics.structural_similarity``
    (``gaussian_weights=True, use_sample_covariance=False``), the 5-px border where the
    window would hang off the image is left out of the mean (torchmetrics alone keeps
    it). Frames must be at least 11x11 pixels.
    """
    p, t = _pair(pred, target)
    h, w = p.shape[-2:]
    if min(h, w) < 11:
        raise ValueError(f"ssim needs frames of at least 11x11 pixels, got {h}x{w}")
    planes_p, planes_t = p.reshape(-1, 1, h, w), t.reshape(-1, 1, h, w)  # (N,1,H,W): SSIM is per plane
    _, ssim_map = structural_similarity_index_measure(
        planes_p, planes_t, data_range=data_range, return_full_image=True
    )  # (N,1,H,W)
    return float(ssim_map[..., 5:-5, 5:-5].mean())


@functools.cache
def _load_lpips() -> torch.nn.Module | None:
    """LPIPS(alex) if the package and ALL its weights are already on disk, else None.

    Checks the files first so that nothing is ever downloaded (LPIPS would otherwise
    fetch the AlexNet backbone through torch.hub). Cached for the process.
    """
    try:
        import lpips
        import torchvision  # noqa: F401  (lpips needs it for the backbone)

        lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")
        backbone = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_FILE)
        if not (os.path.isfile(lin) and os.path.isfile(backbone)):
            return None
        return lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception:  # missing package, broken install, incompatible versions: no LPIPS
        return None


def lpips_or_none(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """Mean LPIPS (AlexNet) over frames, or None when `lpips` (and torchvision) or its
    weights are not installed locally. Never downloads anything.

    A 4-D input is read as (3,T,H,W) when dim 0 is 3 and dim 1 is not, else (B,3,H,W).
    """
    model = _load_lpips()
    if model is None:
        return None
    p, t = _pair(pred, target)
    if p.ndim == 3:
        p, t = p[None], t[None]
    elif p.ndim == 4 and p.shape[0] == 3 and p.shape[1] != 3:  # (3,T,H,W) -> (T,3,H,W)
        p, t = p.transpose(0, 1), t.transpose(0, 1)
    with torch.no_grad():
        return float(model(p, t).mean())


def history_mean_frame(history: torch.Tensor) -> torch.Tensor:
    """(3,T,H,W) -> (3,H,W) per-pixel mean over time: the trivial baseline any recall must beat."""
    if history.ndim != 4 or history.shape[0] != 3 or history.shape[1] < 1:
        raise ValueError(f"expected a (3,T,H,W) history with T >= 1, got {tuple(history.shape)}")
    return history.float().mean(dim=1)


def _t975(df: int) -> float:
    """t_{0.975, df}: table for df <= 30, Cornish-Fisher expansion above (error < 1e-5)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_and_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student t confidence interval.

    Uses the sample standard deviation (ddof=1). A single value gives a half-width of
    ``inf`` (no spread information). No scipy needed: t quantiles come from a table
    (df <= 30) and a Cornish-Fisher expansion beyond.
    """
    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("mean_and_ci95 needs at least one value")
    mean = math.fsum(x) / n
    if n == 1:
        return mean, math.inf
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    return mean, _t975(n - 1) * sd / math.sqrt(n)


def error_heatmap(pred: torch.Tensor, target: torch.Tensor, vmax: float = 1.0) -> np.ndarray:
    """(3,H,W) tensors -> uint8 (H,W,3) RGB inferno map of the channel-mean absolute error.

    The scale is fixed (0 -> black, ``vmax`` or more -> the brightest colour) so maps of
    different frames are comparable.
    """
    p, t = _pair(pred, target)
    if p.ndim != 3 or p.shape[0] != 3:
        raise ValueError(f"expected (3,H,W) frames, got {tuple(p.shape)}")
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    err = (p - t).abs().mean(dim=0)  # (H,W)
    level = (err / vmax).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    bgr = cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)  # (H,W,3) BGR
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
