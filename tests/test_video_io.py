"""Tests for pfp_app.io.video: MP4 round trips, metadata, errors, tensor conversion."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from pfp_app.io import video as video_io
from pfp_app.io.video import (
    VideoInfo,
    VideoReadError,
    frames_to_tensor,
    read_mp4_comment,
    read_video,
    tensor_to_frames,
    video_info,
    write_mp4,
)


def gradient_clip(t: int = 24, h: int = 64, w: int = 96) -> np.ndarray:
    """uint8 (T,H,W,3): smooth gradients that move by a few pixels per frame."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 128 + 100 * np.sin((xx + 2 * tt) / 12.0)
    g = 128 + 100 * np.cos((yy - tt) / 10.0)
    b = 40 + 150 * (xx + yy) / (h + w)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def index_clip(t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """uint8 (T,H,W,3) flat frames whose grey level encodes the frame index (10 * i)."""
    return np.repeat((np.arange(t, dtype=np.uint8) * 10)[:, None, None, None], h * w * 3).reshape(t, h, w, 3)


def decoded_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 10.0))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def ffmpeg_probe_text(path: Path) -> str:
    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    return res.stderr.decode("utf-8", errors="replace")  # "-i" alone prints stream info and exits 1


def test_round_trip_frames_fps_quality_and_codec(tmp_path: Path) -> None:
    frames = gradient_clip()
    out = write_mp4(tmp_path / "clip.mp4", frames, fps=12, crf=18)
    assert out == tmp_path / "clip.mp4" and out.is_file()
    assert os.listdir(tmp_path) == ["clip.mp4"]  # no temp file left behind

    back, fps = read_video(out)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    assert fps == 12.0
    assert psnr_uint8(back, frames) > 30.0
    # frames come back in order, not shuffled or duplicated: each is closest to its source
    dists = ((back[:, None].astype(float) - frames[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    assert (dists.argmin(axis=1) == np.arange(len(frames))).all()

    assert video_info(out) == VideoInfo(fps=12.0, num_frames=24, width=96, height=64, duration=2.0)
    probe = ffmpeg_probe_text(out)
    assert "h264" in probe and "yuv420p" in probe


def test_lower_crf_is_higher_quality(tmp_path: Path) -> None:
    frames = gradient_clip(t=8)
    hi, _ = read_video(write_mp4(tmp_path / "hi.mp4", frames, fps=8, crf=10))
    lo, _ = read_video(write_mp4(tmp_path / "lo.mp4", frames, fps=8, crf=40))
    assert psnr_uint8(hi, frames) > psnr_uint8(lo, frames) + 3


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    frames = gradient_clip(t=6, h=33, w=47)
    back, _ = read_video(write_mp4(tmp_path / "odd.mp4", frames, fps=6))
    assert back.shape == (6, 34, 48, 3)
    assert psnr_uint8(back[:, :33, :47], frames) > 30.0  # content is kept, not resized
    # the padding repeats the last row / column
    assert np.abs(back[:, 33].astype(int) - back[:, 32].astype(int)).mean() < 4


def test_torch_input_matches_numpy_input(tmp_path: Path) -> None:
    frames = gradient_clip(t=6)
    a, _ = read_video(write_mp4(tmp_path / "np.mp4", frames, fps=6))
    b, _ = read_video(write_mp4(tmp_path / "pt.mp4", frames_to_tensor(frames), fps=6))
    c, _ = read_video(write_mp4(tmp_path / "it.mp4", iter(list(frames)), fps=6))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_comment_round_trip(tmp_path: Path) -> None:
    comment = 'seed=7; prompt: "a fox" #1 \\ ünïcödé\nsecond line'
    p = write_mp4(tmp_path / "c.mp4", gradient_clip(t=2), fps=2, comment=comment)
    assert read_mp4_comment(p) == comment
    q = write_mp4(tmp_path / "none.mp4", gradient_clip(t=2), fps=2)
    assert read_mp4_comment(q) is None


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def frames():
        yield from gradient_clip(t=3)
        raise RuntimeError("generator crashed")

    target = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="generator crashed"):
        write_mp4(target, frames(), fps=4)
    assert os.listdir(tmp_path) == []

    # an existing good file is not clobbered by a failed overwrite
    write_mp4(target, gradient_clip(t=2), fps=2)
    before = target.read_bytes()
    bad = [gradient_clip(t=1)[0], gradient_clip(t=1, h=32)[0]]
    with pytest.raises(ValueError, match="same size"):
        write_mp4(target, bad, fps=2)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["crash.mp4"]


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), torch.zeros(2, 3, 8, 8), []],
)
def test_write_rejects_bad_frames(tmp_path: Path, frames: object) -> None:
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "x.mp4", frames, fps=4)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_read_range_max_frames_and_resize(tmp_path: Path) -> None:
    p = write_mp4(tmp_path / "idx.mp4", index_clip(24), fps=12)
    frames, fps = read_video(p, start_s=1.0)
    assert fps == 12.0 and [decoded_index(f) for f in frames] == list(range(12, 24))
    frames, _ = read_video(p, start_s=0.5, end_s=1.0)
    assert [decoded_index(f) for f in frames] == [6, 7, 8, 9, 10, 11]
    frames, _ = read_video(p, start_s=0.55, max_frames=3)  # first frame at or after 0.55 s is #7
    assert [decoded_index(f) for f in frames] == [7, 8, 9]
    frames, _ = read_video(p, max_frames=100)
    assert len(frames) == 24

    g = write_mp4(tmp_path / "g.mp4", gradient_clip(t=2), fps=2)
    small, _ = read_video(g, size=(16, 24))
    assert small.shape == (2, 16, 24, 3)
    full, _ = read_video(g)
    expected = full.reshape(2, 16, 4, 24, 4, 3).mean(axis=(2, 4))  # INTER_AREA = box average here
    assert np.abs(small.astype(float) - expected).max() <= 1.0


def test_read_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    for fn in (read_video, video_info, read_mp4_comment):
        with pytest.raises(VideoReadError, match=r"cannot read video '.*missing\.mp4': file not found"):
            fn(missing)

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    for fn in (read_video, video_info, read_mp4_comment):
        with pytest.raises(VideoReadError, match=r"cannot read video '.*corrupt\.mp4': not a video or corrupt"):
            fn(corrupt)

    with pytest.raises(VideoReadError, match="not a file"):
        read_video(tmp_path)

    p = write_mp4(tmp_path / "short.mp4", index_clip(4), fps=4)
    with pytest.raises(VideoReadError, match="no frames"):
        read_video(p, start_s=5.0)
    with pytest.raises(ValueError):
        read_video(p, start_s=2.0, end_s=1.0)


def test_too_large_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_mp4(tmp_path / "big.mp4", index_clip(2), fps=2)
    monkeypatch.setattr(video_io, "MAX_UPLOAD_BYTES", p.stat().st_size - 1)
    for fn in (read_video, video_info):
        with pytest.raises(VideoReadError, match="too large"):
            fn(p)
    assert video_io.MAX_UPLOAD_BYTES != 2 * 1024**3
    monkeypatch.undo()
    assert video_io.MAX_UPLOAD_BYTES == 2 * 1024**3


def test_tensor_conversion_is_exact_inverse() -> None:
    frames = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=-1)  # every uint8 value
    x = frames_to_tensor(frames)
    assert x.shape == (3, 1, 4, 64) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([-1.0] * 3))
    assert np.array_equal(tensor_to_frames(x), frames)


def test_tensor_to_frames_clamps_and_rounds() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.004, 1.0, 5.0]).view(1, 1, 1, 6).expand(3, 1, 1, 6)
    out = tensor_to_frames(x)
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]  # 127.5 -> 128, 128.01 -> 128
    with pytest.raises(ValueError):
        tensor_to_frames(torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError):
        frames_to_tensor(np.zeros((1, 2, 2, 3), np.float32))


def test_seek_falls_back_to_decoding_when_fast_seek_fails(tmp_path: Path) -> None:
    import cv2

    p = write_mp4(tmp_path / "idx.mp4", index_clip(24), fps=12)

    class NoSeekCapture:
        """A capture whose fast seek silently fails (as with some containers)."""

        def __init__(self) -> None:
            self.cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)

        def set(self, prop: int, value: float) -> bool:
            return False

        def get(self, prop: int) -> float:
            return self.cap.get(prop)

        def open(self, *args: object) -> bool:
            return self.cap.open(*args)

        def grab(self) -> bool:
            return self.cap.grab()

    cap = NoSeekCapture()
    video_io._seek(cap, p, 12)  # type: ignore[arg-type]
    ok, bgr = cap.cap.read()
    assert ok and decoded_index(bgr) == 12


def test_frames_are_read_without_ffmpeg(tmp_path: Path) -> None:
    """A training machine (the GPU device) has cv2 but no imageio-ffmpeg: reading must not need it."""
    import sys

    p = write_mp4(tmp_path / "idx.mp4", index_clip(8), fps=8)
    code = ("import sys; sys.modules['imageio_ffmpeg'] = None\n"  # any `import imageio_ffmpeg` now fails
            "from pfp_app.io.video import read_video\n"
            f"frames, fps = read_video({str(p)!r})\n"
            "print(frames.shape[0], fps)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["8", "8.0"]


def test_frame_count_decodes_a_file_once_and_again_when_it_is_rewritten(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "seg.mp4"
    write_mp4(path, index_clip(12), fps=8)
    calls = []
    real = video_io.video_info
    monkeypatch.setattr(video_io, "video_info", lambda p: calls.append(p) or real(p))
    assert video_io.frame_count(path) == 12 and video_io.frame_count(path) == 12
    assert len(calls) == 1  # the second slider update reads no video
    write_mp4(path, index_clip(20), fps=8)  # a regenerated segment: new file, new length
    assert video_io.frame_count(path) == 20 and len(calls) == 2
    with pytest.raises(FileNotFoundError):
        video_io.frame_count(tmp_path / "missing.mp4")
