"""Scores of the storyboard world's frames (`pfp_app.data.world`): how alike two appearances of a character
are (`appearance_signature`, `signature_agreement`) and how alike two views of a place are (`view_agreement`).
The consistency and fidelity benchmarks (benchmarks/) and tests/test_world.py score with them."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["appearance_signature", "signature_agreement", "view_agreement"]


def _box_crop(frame: np.ndarray, box) -> np.ndarray:
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box[-4:])
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"box {tuple(box)} is empty inside a {w}x{h} frame")
    return frame[y0:y1, x0:x1]


HIST_BINS = 4
PATTERN_SCALE = 40.0
# The disc (centre, radius, in box units) lies inside every shape's box-filling
# sprite: it is the triangle's incircle, which the circle and the square contain.
SIG_CENTRE = (0.5, 0.63)
SIG_RADIUS = 0.28
SIG_SIGMA = 0.15


def appearance_signature(frame_uint8: np.ndarray, box) -> np.ndarray:
    """Colour + pattern signature of the object in ``box`` = (x0, y0, x1, y1) (a
    (visible, x0, y0, x1, y1) track row also works).

    64 values: a 4x4x4 RGB histogram weighted by a Gaussian on the disc that every
    shape covers (the triangle's incircle, :data:`SIG_CENTRE`, :data:`SIG_RADIUS`),
    so background around the shape does not count, normalised to sum 1; then 2 values:
    weighted mean |d/dx| and |d/dy| of the luminance, divided by 40 (horizontal
    stripes give a large d/dy, dots give both, solid gives little).
    """
    crop = np.asarray(_box_crop(np.asarray(frame_uint8), box), np.float32)
    h, w = crop.shape[:2]
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h - SIG_CENTRE[1]
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w - SIG_CENTRE[0]
    r2 = yy[:, None] ** 2 + xx[None, :] ** 2
    wgt = np.exp(-r2 / (2 * SIG_SIGMA**2)) * (r2 <= SIG_RADIUS**2)
    if wgt.sum() <= 0:
        wgt = np.ones_like(r2)
    q = np.clip((crop * (HIST_BINS / 256.0)).astype(np.int64), 0, HIST_BINS - 1)
    idx = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    hist = np.bincount(idx.ravel(), weights=wgt.ravel(), minlength=HIST_BINS**3)
    hist = hist / max(hist.sum(), 1e-8)
    lum = crop @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = np.abs(np.diff(lum, axis=1))
    gy = np.abs(np.diff(lum, axis=0))
    wx = (wgt[:, 1:] + wgt[:, :-1]) / 2
    wy = (wgt[1:, :] + wgt[:-1, :]) / 2
    ex = float((gx * wx).sum() / max(wx.sum(), 1e-8)) / PATTERN_SCALE
    ey = float((gy * wy).sum() / max(wy.sum(), 1e-8)) / PATTERN_SCALE
    return np.concatenate([hist, [ex, ey]]).astype(np.float32)


def signature_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement in [0, 1] of two appearance signatures: 0.7 x colour-histogram
    intersection + 0.3 x pattern similarity (sum(min)/sum(max) of the gradient
    energies)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n = HIST_BINS**3
    hist = float(np.minimum(a[:n], b[:n]).sum())
    pa, pb = a[n:] + 0.05, b[n:] + 0.05
    pat = float(np.minimum(pa, pb).sum() / np.maximum(pa, pb).sum())
    return float(np.clip(0.7 * hist + 0.3 * pat, 0.0, 1.0))


def view_agreement(frame_a: np.ndarray, frame_b: np.ndarray) -> float:
    """How alike two views are, in [0, 1]: SSIM of the grayscale frames downsampled
    to 32x32 (negative SSIM clipped to 0)."""
    from skimage.metrics import structural_similarity

    def prep(f):
        f = np.asarray(f)
        if f.dtype != np.uint8:
            f = np.clip(f, 0, 255).astype(np.uint8)
        g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f
        return cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)

    s = structural_similarity(prep(frame_a), prep(frame_b), data_range=255.0, win_size=7)
    return float(np.clip(s, 0.0, 1.0))
