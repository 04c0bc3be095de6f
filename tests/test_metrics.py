"""Tests for pfp_app.evaluation.metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfp_app.evaluation import metrics
from pfp_app.evaluation.metrics import error_heatmap, history_mean_frame, lpips_or_none, mean_and_ci95, psnr, ssim


def astronaut64() -> torch.Tensor:
    """A real photo as (3,64,64) float in [-1,1]."""
    from skimage import data

    img = cv2.resize(data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)  # (64,64,3) uint8
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0


def noisy(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# ---------------------------------------------------------------- psnr


def test_psnr_constant_offset_matches_hand_computation() -> None:
    x = torch.rand(3, 4, 16, 16) * 1.5 - 0.8
    expected = 10 * math.log10(2.0**2 / 0.1**2)  # 26.0206 dB
    assert psnr(x + 0.1, x) == pytest.approx(expected, abs=1e-3)
    assert psnr(x + 0.1, x, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01), abs=1e-3)


def test_psnr_identical_is_inf_and_layout_free() -> None:
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x) == float("inf")
    y = noisy(x, 0.2)
    # global MSE: the same number whatever the layout of the leading dims
    assert psnr(y, x) == pytest.approx(psnr(y.transpose(0, 1), x.transpose(0, 1)), abs=1e-4)
    assert psnr(y[0], x[0]) > 0
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(x, x[0])


def test_psnr_is_global_mse_not_mean_of_frames() -> None:
    x = torch.zeros(3, 2, 8, 8)
    y = x.clone()
    y[:, 1] += 0.2  # frame 0 perfect, frame 1 off by 0.2
    mse = 0.2**2 / 2
    assert psnr(y, x) == pytest.approx(10 * math.log10(4 / mse), abs=1e-3)


# ---------------------------------------------------------------- ssim


def test_ssim_identical_is_one_and_noise_is_low() -> None:
    img = astronaut64()
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    rand = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert ssim(rand, img) < 0.5


def test_ssim_decreases_as_noise_increases() -> None:
    img = astronaut64()
    scores = [ssim(noisy(img, s), img) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_ssim_matches_skimage_on_a_photo() -> None:
    from skimage.metrics import structural_similarity

    img = astronaut64()
    for std in (0.02, 0.05, 0.2, 0.5):
        pred = noisy(img, std, seed=3)
        ours = ssim(pred, img)
        ref = structural_similarity(
            pred.permute(1, 2, 0).numpy(), img.permute(1, 2, 0).numpy(), channel_axis=-1,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0,
        )
        assert ours == pytest.approx(ref, abs=1e-4)  # brief asked for 0.02; the match is exact


def test_ssim_video_layout_is_mean_over_frames() -> None:
    img = astronaut64()
    a, b = noisy(img, 0.05, seed=1), noisy(img, 0.3, seed=2)
    video_pred = torch.stack([a, b], dim=1)  # (3,2,H,W)
    video_target = torch.stack([img, img], dim=1)
    expected = (ssim(a, img) + ssim(b, img)) / 2
    assert ssim(video_pred, video_target) == pytest.approx(expected, abs=1e-5)
    # (B,3,H,W) gives the same
    assert ssim(video_pred.transpose(0, 1), video_target.transpose(0, 1)) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


# ---------------------------------------------------------------- lpips


def test_lpips_is_none_without_package() -> None:
    metrics._load_lpips.cache_clear()
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert lpips_or_none(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)) is None
    metrics._load_lpips.cache_clear()


def _fake_lpips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_weights: bool) -> list[str]:
    """Install stand-in `lpips`/`torchvision` modules; return the list of constructor calls."""
    calls: list[str] = []
    pkg = tmp_path / "lpips"
    pkg.mkdir()

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net: str, verbose: bool = True) -> None:
            super().__init__()
            calls.append(net)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) -> (N,1,1,1)
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    mod = types.ModuleType("lpips")
    mod.__file__ = str(pkg / "__init__.py")
    mod.LPIPS = FakeLPIPS  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lpips", mod)
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    if with_weights:
        (pkg / "weights" / "v0.1").mkdir(parents=True)
        (pkg / "weights" / "v0.1" / "alex.pth").write_bytes(b"x")
        (hub / "checkpoints").mkdir(parents=True)
        (hub / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    metrics._load_lpips.cache_clear()
    return calls


def test_lpips_never_builds_model_without_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_lpips(tmp_path, monkeypatch, with_weights=False)
    try:
        assert lpips_or_none(torch.zeros(3, 16, 16), torch.ones(3, 16, 16)) is None
        assert calls == []  # the model (which could download) was never constructed
    finally:
        metrics._load_lpips.cache_clear()


def test_lpips_used_when_weights_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_lpips(tmp_path, monkeypatch, with_weights=True)
    try:
        video = torch.zeros(3, 5, 16, 16)
        assert lpips_or_none(video, video + 0.5) == pytest.approx(0.5)
        assert calls == ["alex"]
    finally:
        metrics._load_lpips.cache_clear()


# ---------------------------------------------------------------- baseline and stats


def test_history_mean_frame_is_the_temporal_mean_and_denoises() -> None:
    clean = astronaut64()
    history = torch.stack([noisy(clean, 0.3, seed=s) for s in range(16)], dim=1)  # (3,16,H,W)
    mean = history_mean_frame(history)
    assert mean.shape == (3, 64, 64)
    assert torch.allclose(mean[:, 5, 7], history[:, :, 5, 7].mean(dim=1))
    # averaging static frames beats any single noisy frame as a guess of the clean one
    assert psnr(mean, clean) > psnr(history[:, 0], clean) + 5
    with pytest.raises(ValueError):
        history_mean_frame(torch.zeros(3, 64, 64))


def test_mean_and_ci95_known_values() -> None:
    mean, hw = mean_and_ci95([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert hw == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)  # 1.963243
    assert mean_and_ci95([2.0, 2.0, 2.0]) == (2.0, 0.0)
    assert mean_and_ci95([7.0]) == (7.0, math.inf)
    with pytest.raises(ValueError):
        mean_and_ci95([])
    # large n approaches the normal interval 1.96 * sd / sqrt(n)
    values = [float(i % 2) for i in range(10_000)]  # sd ~ 0.5
    _, hw = mean_and_ci95(values)
    assert hw == pytest.approx(1.96 * 0.5 / 100, rel=1e-3)


def test_mean_and_ci95_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in [2, 3, 10, 30, 31, 32, 45, 100, 1000]:
        x = rng.normal(5.0, 2.0, n)
        mean, hw = mean_and_ci95(list(x))
        lo, hi = stats.t.interval(0.95, df=n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean == pytest.approx(x.mean(), rel=1e-12)
        assert hw == pytest.approx((hi - lo) / 2, rel=1e-5)


# ---------------------------------------------------------------- heatmap


def test_error_heatmap_colours() -> None:
    target = torch.zeros(3, 20, 30)
    pred = target.clone()
    pred[:, 10:, 15:] = 0.5  # one quadrant off by 0.5
    pred[:, :2, :2] = 1.0  # a corner off by 1.0 (= vmax, saturates)
    heat = error_heatmap(pred, target)
    assert heat.dtype == np.uint8 and heat.shape == (20, 30, 3)

    lut_bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], cv2.COLORMAP_INFERNO)  # (1,256,3)
    lut = cv2.cvtColor(lut_bgr, cv2.COLOR_BGR2RGB)[0]
    assert (heat[5, 5] == lut[0]).all()  # zero error -> darkest inferno colour
    assert (heat[15, 20] == lut[128]).all()  # 0.5 of vmax -> middle colour (RGB order)
    assert (heat[0, 0] == lut[255]).all()  # saturates at vmax
    assert heat[15, 20].astype(int).sum() > heat[5, 5].astype(int).sum()
    assert (error_heatmap(pred, target, vmax=0.5)[15, 20] == lut[255]).all()
    with pytest.raises(ValueError):
        error_heatmap(torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 4, 4))
