"""Reading and writing video files: H.264 MP4 out (imageio-ffmpeg), RGB frames in (OpenCV).

Frame conventions: numpy ``uint8 (T,H,W,3)`` RGB on disk side, torch ``float (3,T,H,W)``
in ``[-1, 1]`` on the model side; :func:`frames_to_tensor` / :func:`tensor_to_frames`
convert between them.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .atomic import atomic_path, temp_path_for


def _imageio_ffmpeg():
    """imageio-ffmpeg (its bundled ffmpeg), imported where it is needed: frames are read through cv2, so a
    machine that only reads videos (the GPU training machine) does not need it installed."""
    import imageio_ffmpeg

    return imageio_ffmpeg


MAX_UPLOAD_BYTES = 2 * 1024**3

PathLike = str | os.PathLike[str]


class VideoReadError(ValueError):
    """A video that cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float  # seconds = num_frames / fps
    header_frames: int | None = field(default=None, compare=False)  # what the header claims (may overstate)

    @property
    def damaged(self) -> bool:
        """The header promises more frames than can be decoded (a half-written or damaged file)."""
        return self.header_frames is not None and self.header_frames > self.num_frames

    def damage_note(self) -> str:
        if not self.damaged:
            return ""
        return (f"the file's header says {self.header_frames / self.fps:.2f} s ({self.header_frames} frames), but only "
                f"{self.num_frames} frames ({self.duration:.2f} s) can be decoded: it is damaged or half-written")


# ---------------------------------------------------------------- tensors


def frames_to_tensor(frames_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (T,H,W,3) -> float32 (3,T,H,W) in [-1, 1]."""
    x = torch.as_tensor(frames_uint8)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T,H,W,3) frames, got {x.dtype} {tuple(x.shape)}")
    return x.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)  # (3,T,H,W)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (3,T,H,W) in [-1, 1] -> uint8 (T,H,W,3); clamps and rounds."""
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected a (3,T,H,W) tensor, got {tuple(x.shape)}")
    y = (x.detach().float().clamp(-1.0, 1.0) + 1.0).mul(127.5).round()
    return y.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()  # (T,H,W,3)


# ---------------------------------------------------------------- writing


def _iter_frames(frames: np.ndarray | torch.Tensor | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield uint8 (H,W,3) frames from any accepted input, one at a time (no full copy)."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] != 3 or not frames.is_floating_point():
            got = f"{frames.dtype} {tuple(frames.shape)}"
            raise ValueError(f"expected a float (3,T,H,W) tensor in [-1,1], got {got}")
        for t in range(frames.shape[1]):
            yield tensor_to_frames(frames[:, t : t + 1])[0]
        return
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"expected uint8 (T,H,W,3) frames, got shape {frames.shape}")
    for f in frames:
        f = np.asarray(f)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
            raise ValueError(f"expected uint8 (H,W,3) frames, got {f.dtype} {f.shape}")
        yield f


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so H and W are even (needed by yuv420p)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(
    path: PathLike,
    frames: np.ndarray | torch.Tensor | Iterable[np.ndarray],
    fps: float,
    crf: int = 18,
    comment: str | None = None,
) -> Path:
    """Encode frames as H.264 / yuv420p MP4 and return the final path.

    ``frames``: numpy uint8 (T,H,W,3) RGB, torch float (3,T,H,W) in [-1,1], or an
    iterable of uint8 (H,W,3) frames (streamed, for long videos). Odd sizes are padded
    by one replicated row/column to even (the file is then 1 px larger). ``comment`` is
    stored as MP4 metadata (see :func:`read_mp4_comment`). Written to a temp file in the
    same folder and renamed, so a crash never leaves a half file under ``path``.
    """
    path = Path(path)
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    it = _iter_frames(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    first = _pad_even(first)
    h, w = first.shape[:2]

    out_params = ["-crf", str(int(crf)), "-preset", "medium"]
    if comment is None:
        out_params += ["-movflags", "+faststart"]
    with atomic_path(path) as tmp:
        video = tmp if comment is None else temp_path_for(path)
        try:
            writer = _imageio_ffmpeg().write_frames(
                str(video), (w, h), fps=fps, codec="libx264", quality=None, pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error", output_params=out_params,
            )
            writer.send(None)  # start ffmpeg
            try:
                writer.send(np.ascontiguousarray(first))
                for f in it:
                    f = _pad_even(f)
                    if f.shape[:2] != (h, w):
                        raise ValueError(f"all frames must have the same size: {f.shape[:2]} != {(h, w)}")
                    writer.send(np.ascontiguousarray(f))
            finally:
                writer.close()
            if comment is not None:
                _remux_with_comment(video, tmp, comment)
        finally:
            if video != tmp:
                video.unlink(missing_ok=True)
    return path


MAX_COMMENT_CHARS = 65_536


def _ffmetadata_escape(value: str) -> str:
    """A value for ffmpeg's FFMETADATA file: '=', ';', '#', '\\' and newlines take a backslash.
    NUL cannot be stored (ffmpeg reads C strings); it is written as U+FFFD (the parser rejects it anyway)."""
    value = value.replace("\x00", "\ufffd")
    for c in ("\\", "=", ";", "#", "\n"):
        value = value.replace(c, "\\" + c)
    return value


def comment_for_metadata(comment: str) -> str:
    """The comment as stored: cut to MAX_COMMENT_CHARS with a note saying so (the full storyboard stays
    in the project folder), so a long storyboard never makes the export fail."""
    if len(comment) <= MAX_COMMENT_CHARS:
        return comment
    note = f"\n… (cut at {MAX_COMMENT_CHARS:,} of {len(comment):,} characters; the project folder has the rest)"
    return comment[: MAX_COMMENT_CHARS - len(note)] + note


def _remux_with_comment(src: Path, dst: Path, comment: str) -> None:
    """Copy the streams of `src` into `dst` with `comment` as metadata, read from an FFMETADATA file.

    Not `-metadata comment=...` on the command line: a long storyboard made the argument list too long
    (E2BIG at ~128 KiB) and a NUL byte made it invalid. The copy (no re-encode) also moves the index to
    the front (+faststart)."""
    meta = temp_path_for(dst.with_name(dst.stem + ".ffmeta.txt"))
    try:
        meta.write_text(";FFMETADATA1\ncomment=" + _ffmetadata_escape(comment_for_metadata(comment)) + "\n",
                        encoding="utf-8")
        cmd = [_imageio_ffmpeg().get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(src), "-f", "ffmetadata", "-i",
               str(meta), "-map", "0", "-map_metadata", "1", "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
               str(dst)]
        res = subprocess.run(cmd, capture_output=True, timeout=3600)
        if res.returncode != 0:
            raise OSError(f"ffmpeg could not write '{dst.name}': {res.stderr.decode(errors='replace')[-300:]}")
    finally:
        meta.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"cannot read video '{path}': file not found")
    if not path.is_file():
        raise VideoReadError(f"cannot read video '{path}': not a file")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        gib = 1024**3
        raise VideoReadError(
            f"cannot read video '{path}': too large ({size / gib:.1f} GiB, limit {MAX_UPLOAD_BYTES / gib:g} GiB)"
        )


def _open(path: PathLike) -> tuple[cv2.VideoCapture, Path, float]:
    """Open with OpenCV's FFmpeg backend; returns (capture, path, fps)."""
    p = Path(path)
    _check_file(p)
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    if not (math.isfinite(fps) and fps > 0):
        cap.release()
        raise VideoReadError(f"cannot read video '{p}': not a video or corrupt")
    return cap, p, float(fps)


def video_info(path: PathLike) -> VideoInfo:
    """Frame rate, frame count, size and duration of a video: the one place that measures a video's length.

    The count is of the frames that decode (grab() demuxes and decodes, without colour conversion), not the
    header's: a half-written MP4 whose header said 177 frames decoded 86, and recall silently returned the
    wrong frame. Costs one decode pass (a 20-s 480p clip: well under a second)."""
    cap, p, fps = _open(path)
    try:
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        n = 0
        while cap.grab():
            n += 1
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if n == 0 or w <= 0 or h <= 0:
        raise VideoReadError(f"cannot read video '{p}': no frames")
    return VideoInfo(fps=fps, num_frames=n, width=w, height=h, duration=n / fps,
                     header_frames=header if header > 0 else None)


@functools.lru_cache(maxsize=4096)
def _frame_count(path: str, inode: int, size: int, mtime_ns: int) -> int:
    return video_info(path).num_frames


def frame_count(path: PathLike) -> int:
    """`video_info(path).num_frames`, decoded once per version of the file: a rewritten file (new inode, size or
    mtime; segments are written atomically, so a new version is a new file) is counted again. The studio asks for
    every segment's length on each slider update, and each `video_info` is a decode pass over the whole file."""
    st = os.stat(path)
    return _frame_count(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def read_video(
    path: PathLike,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> tuple[np.ndarray, float]:
    """Read RGB frames as uint8 (T,H,W,3) plus the file's fps.

    Frames ``i`` with timestamp ``i / fps`` in ``[start_s, end_s)`` are returned, at most
    ``max_frames`` of them; ``size=(H, W)`` resizes each frame with ``cv2.INTER_AREA``.
    """
    if not start_s >= 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and not end_s > start_s:
        raise ValueError(f"end_s must be after start_s, got {end_s} <= {start_s}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (H, W) with positive ints, got {size}")

    cap, p, fps = _open(path)
    eps = 1e-6
    first = math.ceil(start_s * fps - eps)
    stop = math.ceil(end_s * fps - eps) if end_s is not None else None
    if max_frames is not None:
        stop = first + max_frames if stop is None else min(stop, first + max_frames)
    out: list[np.ndarray] = []
    try:
        if first > 0:
            _seek(cap, p, first)
        i = first
        while stop is None or i < stop:
            ok, bgr = cap.read()
            if not ok:
                break
            if size is not None:
                bgr = cv2.resize(bgr, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()
    if not out:
        where = f" after {start_s:g}s" if first > 0 else ""
        raise VideoReadError(f"cannot read video '{p}': no frames{where}")
    return np.stack(out), fps  # (T,H,W,3)


def _seek(cap: cv2.VideoCapture, p: Path, frame: int) -> None:
    """Position ``cap`` at ``frame``: fast seek, verified, else decode-and-skip."""
    if cap.set(cv2.CAP_PROP_POS_FRAMES, frame) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == frame:
        return
    cap.open(str(p), cv2.CAP_FFMPEG)
    for _ in range(frame):
        if not cap.grab():
            return


def read_mp4_comment(path: PathLike) -> str | None:
    """The ``comment`` metadata tag written by :func:`write_mp4`, or None if absent."""
    p = Path(path)
    _check_file(p)
    cmd = [_imageio_ffmpeg().get_ffmpeg_exe(), "-v", "error", "-i", str(p), "-f", "ffmetadata", "-"]
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    if res.returncode != 0:
        raise VideoReadError(f"cannot read video '{p}': not a video or corrupt")
    return _parse_ffmetadata(res.stdout.decode("utf-8", errors="replace")).get("comment")


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """Global-section tags of ffmpeg's FFMETADATA format (keys lower-cased, escapes undone).

    Values escape '=', ';', '#', '\\' and newlines with a backslash.
    """
    tags: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        # read one logical line, honouring backslash escapes
        buf: list[str] = []
        key: str | None = None
        raw_start = i
        while i < n and text[i] != "\n":
            c = text[i]
            if c == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 2
                continue
            if c == "=" and key is None:
                key, buf = "".join(buf), []
            else:
                buf.append(c)
            i += 1
        i += 1
        first_char = text[raw_start : raw_start + 1]
        if first_char == "[":
            break  # stream/chapter sections follow; only global tags are wanted
        if first_char in (";", "#") or key is None:
            continue
        tags[key.lower()] = "".join(buf)
    return tags
