"""Any video prepared for memory inspection: the CLI's `recall` and the studio's upload share this.

The `history_seconds` around the asked time (those that end at it, or near the start the first ones,
which hold it) are resized and resampled (nearest frame) to the model's size and frame rate and trimmed to
1 + 4k frames, as the codec needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..io.video import MAX_UPLOAD_BYTES, VideoInfo, VideoReadError, frames_to_tensor, read_video, video_info


@dataclass
class Clip:
    """A video prepared for recall: pixels at the model's size and frame rate, 1 + 4k frames."""

    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]
    first_time: float  # seconds of frames[:, 0] in the source video
    fps: float
    source_duration: float | None = None  # decodable seconds of the source video (times up to it are valid)

    @property
    def last_time(self) -> float:
        return self.time_of(self.frames.shape[1] - 1)

    def frame_index(self, seconds: float) -> int:
        return min(self.frames.shape[1] - 1, max(0, round((seconds - self.first_time) * self.fps)))

    def time_of(self, frame_index: int) -> float:
        return self.first_time + frame_index / self.fps

    def holds(self, seconds: float) -> bool:
        """Whether `seconds` of the source video falls inside this clip (to half a frame)."""
        return self.first_time - 0.5 / self.fps <= seconds <= self.time_of(self.frames.shape[1] - 1) + 0.5 / self.fps


def check_video(path: str | Path | None) -> VideoInfo:
    """Video info of a user's file, or VideoReadError with a message a user can act on."""
    if not path:
        raise VideoReadError("no video given")
    p = Path(path)
    if p.is_file() and p.stat().st_size > MAX_UPLOAD_BYTES:
        raise VideoReadError(f"'{p.name}' is larger than the upload limit ({p.stat().st_size:,} bytes; "
                             "uploads are limited to 2 GiB)")
    return video_info(p)


def recall_window(duration: float, at: float, history_seconds: float) -> tuple[float, float]:
    """(start, end) seconds of the history compressed for a recall at `at`: the `history_seconds` that end at
    `at`, or, when `at` is nearer the start than that, the first `history_seconds` of the video (they hold it)."""
    if at >= history_seconds:
        return at - history_seconds, at
    return 0.0, min(duration, history_seconds)


def check_recall_request(path: str | Path, at: float, history_seconds: float,
                         names: tuple[str, str] = ("", "the history length")) -> tuple[VideoInfo, float]:
    """Validate a recall request before any model is loaded: (video info, history start in seconds).

    names: how the caller calls the time and the history length in messages (the CLI: '--at ', '--history')."""
    at_name, history_name = names
    info = check_video(path)
    if not history_seconds > 0:
        raise ValueError(f"{history_name} must be positive")
    if not 0 <= at <= info.duration:
        damage = f"; {info.damage_note()}" if info.damaged else ""
        raise ValueError(f"{at_name}{at:g} s is outside the video (0 to {info.duration:.2f} s{damage})")
    return info, recall_window(info.duration, at, history_seconds)[0]


def prepare_clip(pipe, path: str | Path, at: float, history_seconds: float,
                 names: tuple[str, str] = ("", "the history length"),
                 progress: Callable[[float, str], None] | None = None) -> Clip:
    """The history of `path` that holds time `at` (seconds; see `recall_window`), ready for `encode_clip` and
    `PFPPipeline.recall`: resized, resampled to the model's frame rate, trimmed to 1 + 4k frames on the side
    away from `at`."""
    info, _ = check_recall_request(path, at, history_seconds, names)
    start, end = recall_window(info.duration, at, history_seconds)
    ends_at_time = end - at <= at - start  # trim the side away from `at` (a window that ends at the video's end keeps its end)
    v = pipe.model.video
    if progress is not None:
        progress(0.0, f"reading {end - start:.1f} s of video")
    frames, fps = read_video(path, size=(v.height, v.width), start_s=start, end_s=end + 0.5 / info.fps)
    n = max(1, int((len(frames) - 1) * v.fps / fps) + 1)
    if ends_at_time:  # resample backwards from the frame at `at`, so that it is kept exactly
        idx = np.maximum(len(frames) - 1 - np.round(np.arange(n)[::-1] * fps / v.fps).astype(int), 0)
    else:
        idx = np.minimum(np.round(np.arange(n) * fps / v.fps).astype(int), len(frames) - 1)
    first_time = math.ceil(start * fps - 1e-6) / fps + idx[0] / fps  # read_video's first frame, then the resampling
    frames = frames[idx]
    r = pipe.model.codec.temporal_ratio
    keep = 1 + r * ((len(frames) - 1) // r)
    if ends_at_time:
        first_time += (len(frames) - keep) / v.fps
        frames = frames[len(frames) - keep :]
    else:
        frames = frames[:keep]
    return Clip(frames_to_tensor(frames), first_time, float(v.fps), info.duration)


@torch.no_grad()
def encode_clip(pipe, clip: Clip, progress: Callable[[float, str], None] | None = None) -> torch.Tensor:
    """Latents (1, C, T', H', W') of a clip: the history φ compresses."""
    if progress is not None:
        progress(0.3, f"compressing {clip.frames.shape[1]} frames")
    return pipe.model.codec.encode(clip.frames[None].to(pipe.device))


__all__ = ["Clip", "VideoReadError", "check_video", "encode_clip", "prepare_clip"]
