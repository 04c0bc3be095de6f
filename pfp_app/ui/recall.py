"""Memory inspector helpers: the pixels of a project's history, an uploaded video prepared the way
`python -m pfp_app recall` prepares it, and the images the inspector shows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..metrics import error_heatmap
from ..pipeline import PFPPipeline, RecallResult
from ..video_io import MAX_UPLOAD_BYTES, VideoReadError, frames_to_tensor, read_video, tensor_to_frames, video_info


@dataclass
class Clip:
    """A video prepared for recall: pixels at the model's size and frame rate, 1 + 4k frames."""

    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]
    first_time: float  # seconds of frames[:, 0] in the source video
    fps: float

    def frame_index(self, seconds: float) -> int:
        return min(self.frames.shape[1] - 1, max(0, round((seconds - self.first_time) * self.fps)))


def check_upload(path: str | Path | None):
    """Video info of an upload, or VideoReadError with a message a user can act on."""
    if not path:
        raise VideoReadError("no video uploaded")
    p = Path(path)
    if p.is_file() and p.stat().st_size > MAX_UPLOAD_BYTES:
        raise VideoReadError(f"'{p.name}' is larger than the upload limit ({p.stat().st_size:,} bytes; uploads are "
                             "limited to 2 GiB)")
    try:
        return video_info(p)
    except VideoReadError as err:
        raise VideoReadError(str(err).replace(str(p), p.name)) from None


def prepare_clip(pipe: PFPPipeline, path: str | Path, at: float, history_seconds: float) -> Clip:
    """The last `history_seconds` of a video (they must include `at`), resized and resampled to the model
    (nearest frame), trimmed to 1 + 4k frames ending at the video's end: what `cli.cmd_recall` does."""
    info = check_upload(path)
    if not history_seconds > 0:
        raise ValueError("the history length must be positive")
    if not 0 <= at <= info.duration:
        raise ValueError(f"{at:g} s is outside the video (0 to {info.duration:.2f} s)")
    start = max(0.0, info.duration - history_seconds)
    if at < start:
        raise ValueError(f"{at:g} s is before the compressed history ({start:.2f} to {info.duration:.2f} s); "
                         f"raise the history length to at least {info.duration - at:.2f} s")
    v = pipe.model.video
    frames, fps = read_video(path, size=(v.height, v.width), start_s=start)
    n = max(1, int((len(frames) - 1) * v.fps / fps) + 1)
    idx = np.minimum(np.round(np.arange(n) * fps / v.fps).astype(int), len(frames) - 1)
    frames = frames[idx]
    r = pipe.model.codec.temporal_ratio
    keep = 1 + r * ((len(frames) - 1) // r)
    first_time = start + (len(frames) - keep) / v.fps
    return Clip(frames_to_tensor(frames[len(frames) - keep:]), first_time, float(v.fps))


@torch.no_grad()
def encode_clip(pipe: PFPPipeline, clip: Clip) -> torch.Tensor:
    """Latents (1, C, T', H', W') of a clip: the history φ compresses."""
    return pipe.model.codec.encode(clip.frames[None].to(pipe.device))


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


def metrics_markdown(res: RecallResult, seconds: float, fps: float) -> str:
    rows = [("time", f"{seconds:.2f} s (frame {res.frame_index})")]
    if res.psnr is not None:
        better = "above" if res.psnr > res.baseline_psnr else "**below**"
        rows += [("PSNR", f"{res.psnr:.2f} dB"), ("SSIM", f"{res.ssim:.3f}"),
                 ("history-mean baseline PSNR", f"{res.baseline_psnr:.2f} dB (recall is {better} it)")]
    rows += [("memory tokens", f"{res.memory_tokens:,}"),
             ("compression ratio", f"{res.compression_ratio:,.0f} latent values per token"),
             ("recall time", f"{res.seconds:.2f} s")]
    return "\n".join(["| recall | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
