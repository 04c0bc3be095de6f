"""Memory inspector helpers: the pixels of a project's history, an uploaded video prepared the way
`python -m pfp_app recall` prepares it, and the images the inspector shows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...evaluation.metrics import error_heatmap
from ...sampling.pipeline import RecallResult
from ...film.recall_clip import check_video
from ...io.video import VideoReadError
from ...io.video import tensor_to_frames


def check_upload(path: str | Path | None):
    """Video info of an upload, or VideoReadError naming the file (not Gradio's temporary path)."""
    try:
        return check_video(path)
    except VideoReadError as err:
        raise VideoReadError(str(err).replace(str(path), Path(path).name)) from err


def zoom(img: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale of small frames so that pixels stay visible (uint8 (H, W, 3))."""
    f = max(1, math.ceil(min_side / max(1, min(img.shape[:2]))))
    return img if f == 1 else np.repeat(np.repeat(img, f, axis=0), f, axis=1)


def recall_images(res: RecallResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true frame, recalled frame, error heat map) as uint8 (H, W, 3) images."""
    recalled = tensor_to_frames(res.recalled[:, None])[0]
    if res.truth is None:
        return None, zoom(recalled), None
    truth = tensor_to_frames(res.truth[:, None])[0]
    return zoom(truth), zoom(recalled), zoom(error_heatmap(res.recalled, res.truth))


def metrics_markdown(res: RecallResult, seconds: float, fps: float, frame_index: int | None = None) -> str:
    """frame_index: the frame's number as the user sees it (a film's, which leaves out the history's lead frame)."""
    rows = [("time", f"{seconds:.2f} s (frame {res.frame_index if frame_index is None else frame_index})")]
    if res.psnr is not None:
        better = "above" if res.psnr > res.baseline_psnr else "**below**"
        rows += [("PSNR", f"{res.psnr:.2f} dB"), ("SSIM", f"{res.ssim:.3f}"),
                 ("history-mean baseline PSNR", f"{res.baseline_psnr:.2f} dB (recall is {better} it)")]
    rows += [("memory tokens", f"{res.memory_tokens:,}"),
             ("compression ratio", f"{res.compression_ratio:,.0f} latent values per token"),
             ("recall time", f"{res.seconds:.2f} s")]
    return "\n".join(["| recall | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
