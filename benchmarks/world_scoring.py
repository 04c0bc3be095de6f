"""Scoring helpers shared by the benchmarks that score generated videos of the world against its storyboard
(consistency.py, fidelity.py, footage.py): which frames of a shot to score, and where a character of a given
colour is drawn."""

from __future__ import annotations


def shot_frames(shot: tuple[float, float], fps: float, num_frames: int, skip: int = 4) -> list[int]:
    """Frame indices of a shot, minus its first `skip` frames: a generated segment's first 3 pixel frames
    precede its start time (latent j decodes frames 4j-3..4j), so they may still show the previous shot."""
    first, end = int(round(shot[0] * fps)), int(round(shot[1] * fps))
    return list(range(min(first + skip, end), min(end, num_frames)))


def spread(xs: list, k: int = 4) -> list:
    """At most k items of xs, evenly spread from its first to its last."""
    if len(xs) <= k:
        return xs
    return [xs[round(i * (len(xs) - 1) / (k - 1))] for i in range(k)]


def locate_by_colour(frame, rgb, side: int) -> tuple[int, int, int, int]:
    """The side x side window whose pixels are closest in colour to `rgb` (a box for appearance_signature)."""
    import cv2
    import numpy as np

    d = np.linalg.norm(frame.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    score = cv2.boxFilter((d < 60).astype(np.float32), -1, (side, side), normalize=True, borderType=cv2.BORDER_CONSTANT)
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    h, w = frame.shape[:2]
    x0, y0 = min(max(x - side // 2, 0), w - side), min(max(y - side // 2, 0), h - side)
    return x0, y0, x0 + side, y0 + side
