"""Real videos for training: random fixed-length windows from a folder of videos.

``VideoFolderDataset(root)`` finds ``*.mp4``, ``*.mov``, ``*.webm`` and ``*.mkv`` files
under ``root`` (recursively, case-insensitive extensions) and yields items in the
same format as :class:`pfp_app.data.world.WorldClipDataset`:

* ``frames``: float tensor (3, T, H, W) in [-1, 1], ``T = frames_for_seconds(seconds, fps)``;
  frame k shows source time ``start + k/fps`` (nearest source frame).  Frames are
  centre-cropped to the target aspect ratio and resized with ``cv2.INTER_AREA``.
* ``storyboard``: the sidecar storyboard shifted into the window (text), or ``""``;
* ``shot_starts``: float tensor of shot starts in seconds, relative to the window;
* ``captions``: list of prompts, one per shot (``[""]`` without a sidecar).

Captions: an optional sidecar ``NAME.txt`` next to ``NAME.mp4`` in the storyboard
format (``0s: prompt`` lines, see ``pfp_app.film.storyboard``); its times are in the
source video's time and are shifted into the window (the shot active at the
window's start begins at 0 s).  A sidecar that does not parse is ignored with a
warning.

Videos shorter than the window are padded by holding their last frame (the window
then starts at 0).  Unreadable files are skipped with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pfp_app.data.world import frames_for_seconds
from pfp_app.film.storyboard import Shot, Storyboard, StoryboardError, format_storyboard, parse_storyboard

__all__ = ["VIDEO_EXTENSIONS", "VideoFolderDataset", "VideoInfo", "find_videos", "shift_storyboard"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")
DEFAULT_SOURCE_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    num_frames: int
    storyboard: Storyboard | None

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def find_videos(root: str | os.PathLike) -> list[Path]:
    """Sorted video paths under root (recursive)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def _count_frames(cap: cv2.VideoCapture) -> int:
    n = 0
    while cap.grab():
        n += 1
    return n


def _probe(path: Path) -> tuple[float, int] | None:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        ok, frame = cap.read()
        if not ok or frame is None:
            return None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            warnings.warn(f"{path}: unknown frame rate, assuming {DEFAULT_SOURCE_FPS:g} fps", stacklevel=3)
            fps = DEFAULT_SOURCE_FPS
        if n <= 0:  # some containers (webm, mkv) do not store a frame count
            n = 1 + _count_frames(cap)
        return fps, n
    finally:
        cap.release()


def _read_sidecar(path: Path) -> Storyboard | None:
    side = path.with_suffix(".txt")
    if not side.is_file():
        return None
    try:
        return parse_storyboard(side.read_text(encoding="utf-8"))
    except (StoryboardError, UnicodeDecodeError, OSError) as e:
        warnings.warn(f"ignoring caption file {side}: {e}", stacklevel=3)
        return None


def shift_storyboard(sb: Storyboard, start: float, seconds: float) -> Storyboard:
    """The part of ``sb`` inside ``[start, start + seconds)``, re-timed to start at 0 s
    and lasting ``seconds`` (the last shot of ``sb`` is extended past its end)."""
    end = start + seconds
    shots = []
    for i, s in enumerate(sb.shots):
        s_end = s.end if i < len(sb.shots) - 1 else math.inf
        if s_end <= start or s.start >= end:
            continue
        a = max(s.start, start) - start
        b = min(s_end, end) - start
        shots.append(Shot(float(a), float(b), s.prompt))
    if not shots:  # cannot happen: the last shot is extended to infinity
        shots = [Shot(0.0, float(seconds), sb.shots[-1].prompt)]
    shots[0] = Shot(0.0, shots[0].end, shots[0].prompt)
    shots[-1] = Shot(shots[-1].start, float(seconds), shots[-1].prompt)
    return Storyboard(shots=tuple(shots), duration=float(seconds))


def _crop_resize(frame_bgr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    th, tw = size_hw
    h, w = frame_bgr.shape[:2]
    target = tw / th
    if w / h > target:  # too wide: crop width
        cw = max(1, int(round(h * target)))
        x0 = (w - cw) // 2
        frame_bgr = frame_bgr[:, x0 : x0 + cw]
    else:
        ch = max(1, int(round(w / target)))
        y0 = (h - ch) // 2
        frame_bgr = frame_bgr[y0 : y0 + ch]
    if frame_bgr.shape[:2] != (th, tw):
        frame_bgr = cv2.resize(frame_bgr, (tw, th), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


class VideoFolderDataset(Dataset):
    """Random windows of ``seconds`` from the videos under ``root`` (see module doc).

    ``size`` is (H, W) or an int for square frames.  ``num_items`` defaults to the
    number of readable videos; item i uses video ``i % num_videos`` and a window start
    drawn deterministically from (seed, i).  A video shorter than the window is padded
    by holding its last frame.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        seconds: float = 20.0,
        size: tuple[int, int] | int = (128, 128),
        fps: float = 8,
        seed: int = 0,
        num_items: int | None = None,
    ):
        self.root = Path(root)
        self.seconds = float(seconds)
        self.size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.seed = int(seed)
        if not (self.seconds > 0 and self.fps > 0):
            raise ValueError("seconds and fps must be positive")
        paths = find_videos(self.root)
        if not paths:
            raise ValueError(f"no videos (*.mp4, *.mov, *.webm, *.mkv) under '{root}'")
        self.videos: list[VideoInfo] = []
        for p in paths:
            probed = _probe(p)
            if probed is None:
                warnings.warn(f"skipping unreadable video {p}", stacklevel=2)
                continue
            self.videos.append(VideoInfo(p, probed[0], probed[1], _read_sidecar(p)))
        if not self.videos:
            raise ValueError(f"no readable videos under '{root}' ({len(paths)} file(s) could not be decoded)")
        self.num_items = len(self.videos) if num_items is None else int(num_items)
        self.num_frames = frames_for_seconds(self.seconds, self.fps)

    def __len__(self) -> int:
        return self.num_items

    def window(self, i: int) -> tuple[VideoInfo, float]:
        """(video, window start in seconds) of item i."""
        v = self.videos[i % len(self.videos)]
        span = (self.num_frames - 1) / self.fps
        slack = max(0.0, v.duration - 1.0 / v.fps - span)
        rng = np.random.default_rng([self.seed, int(i), zlib.crc32(v.path.name.encode())])
        start = float(rng.uniform(0.0, slack)) if slack > 0 else 0.0
        # start on a source frame so the first frame is exact
        start = math.floor(start * v.fps) / v.fps
        return v, start

    def _read(self, v: VideoInfo, indices: np.ndarray) -> np.ndarray:
        """Decode the given (non-decreasing) source frame indices; frames past the end
        of the stream repeat the last decoded frame."""
        out = np.empty((len(indices), self.size[0], self.size[1], 3), np.uint8)
        cap = cv2.VideoCapture(str(v.path))
        try:
            first = int(indices[0])
            pos = 0
            if first > 0 and cap.set(cv2.CAP_PROP_POS_FRAMES, first):
                pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
                if pos != first:  # inexact seek: start over from the beginning
                    cap.release()
                    cap = cv2.VideoCapture(str(v.path))
                    pos = 0
            last: np.ndarray | None = None
            last_idx = -1
            ended = False
            for k, idx in enumerate(indices):
                idx = int(idx)
                if idx != last_idx and not ended:
                    while pos < idx and cap.grab():
                        pos += 1
                    ok = pos == idx
                    frame = None
                    if ok:
                        ok, frame = cap.read()
                        pos += 1 if ok else 0
                    if ok and frame is not None:
                        last = _crop_resize(frame, self.size)
                        last_idx = idx
                    else:
                        ended = True
                if last is None:
                    raise OSError(f"could not decode any frame of {v.path}")
                out[k] = last
        finally:
            cap.release()
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        v, start = self.window(i)
        times = start + np.arange(self.num_frames) / self.fps
        idx = np.clip(np.round(times * v.fps).astype(np.int64), 0, v.num_frames - 1)
        frames = self._read(v, idx)
        item = {
            "frames": torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0),
        }
        if v.storyboard is not None:
            sb = shift_storyboard(v.storyboard, start, self.seconds)
            item["storyboard"] = format_storyboard(sb)
            item["shot_starts"] = torch.tensor([s.start for s in sb.shots], dtype=torch.float32)
            item["captions"] = [s.prompt for s in sb.shots]
        else:
            item["storyboard"] = ""
            item["shot_starts"] = torch.zeros(1, dtype=torch.float32)
            item["captions"] = [""]
        return item
