"""Tests of pfp_app.data.video_folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfp_app.data.video_folder import VideoFolderDataset, shift_storyboard
from pfp_app.data.world import frames_for_seconds
from pfp_app.film.storyboard import parse_storyboard

SRC_FPS = 24


def _write_video(path: Path, num_frames: int, fps: int = SRC_FPS, size=(96, 64)) -> None:
    """Frame k encodes k in its lower half: left half = 16*(k//16), right half = 16*(k%16)."""
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for k in range(num_frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[h // 2 :, : w // 2] = 16 * (k // 16)
        frame[h // 2 :, w // 2 :] = 16 * (k % 16)
        frame[: h // 4, : w // 8] = (0, 0, 255)  # red (BGR) corner patch: checks colour order + crop
        vw.write(frame)
    vw.release()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    _write_video(root / "long.mp4", 10 * SRC_FPS)  # 10 s
    (root / "long.txt").write_text("# caption\n0s: a sunrise\n3s: a bird lands\n6.5s: the bird flies away\n")
    _write_video(root / "sub" / "short.mp4", 2 * SRC_FPS)  # 2 s, no sidecar
    (root / "broken.mkv").write_bytes(b"not a video at all")
    (root / "notes.md").write_text("ignored")
    return root


def _decoded_source_index(frames: torch.Tensor) -> np.ndarray:
    """Recover the encoded source frame index of every frame (3,T,H,W in [-1,1])."""
    H, W = frames.shape[2:]
    lower = (frames[:, :, H // 2 + 2 :, :].mean(dim=0) + 1) * 127.5  # (T, h, W)
    hi = lower[:, :, 2 : W // 2 - 2].mean(dim=(1, 2)).numpy()
    lo = lower[:, :, W // 2 + 2 : W - 2].mean(dim=(1, 2)).numpy()
    return (16 * np.round(hi / 16) + np.round(lo / 16)).astype(int)


def test_window_length_fps_and_caption_shift(folder):
    with pytest.warns(UserWarning, match="broken.mkv"):
        ds = VideoFolderDataset(folder, seconds=4.0, size=(32, 48), fps=8, seed=0, num_items=6)
    assert len(ds.videos) == 2 and len(ds) == 6
    T = frames_for_seconds(4.0, 8)
    long_items = [i for i in range(len(ds)) if ds.window(i)[0].path.name == "long.mp4"]
    assert long_items
    for i in long_items:
        item = ds[i]
        v, start = ds.window(i)
        assert item["frames"].shape == (3, T, 32, 48)
        assert item["frames"].min() >= -1 and item["frames"].max() <= 1
        # resampled to 8 fps: every frame steps 3 source frames (24 fps / 8 fps)
        src = _decoded_source_index(item["frames"])
        expected = np.round((start + np.arange(T) / 8) * SRC_FPS).astype(int)
        assert np.abs(src - expected).max() <= 1, (src, expected)
        assert 0 <= start <= 10 - (T - 1) / 8
        # captions shifted into the window
        sb = parse_storyboard(item["storyboard"])
        assert sb.duration == 4.0
        assert [s.prompt for s in sb.shots] == item["captions"]
        assert item["shot_starts"].tolist() == pytest.approx([s.start for s in sb.shots])
        assert item["shot_starts"][0] == 0.0
        full = parse_storyboard((folder / "long.txt").read_text())
        for s in sb.shots:
            assert full.prompt_at(start + s.start) == s.prompt
        # colour order: the corner patch is red in RGB
        corner = item["frames"][:, 0, 0, 0]
        assert corner[0] > 0.5 and corner[2] < -0.5
    # deterministic per (seed, index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = VideoFolderDataset(folder, seconds=4.0, size=(32, 48), fps=8, seed=0, num_items=6)
        other_seed = VideoFolderDataset(folder, seconds=4.0, size=(32, 48), fps=8, seed=1, num_items=6)
    assert torch.equal(again[long_items[0]]["frames"], ds[long_items[0]]["frames"])
    starts = {ds.window(i)[1] for i in long_items}
    starts_other = {other_seed.window(i)[1] for i in long_items}
    assert starts != starts_other


def test_short_video_holds_last_frame_and_empty_caption(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VideoFolderDataset(folder, seconds=4.0, size=32, fps=8)
    i = next(i for i in range(len(ds)) if ds.window(i)[0].path.name == "short.mp4")
    assert ds.window(i)[1] == 0.0
    item = ds[i]
    T = frames_for_seconds(4.0, 8)
    assert item["frames"].shape == (3, T, 32, 32)
    src = _decoded_source_index(item["frames"])
    last = 2 * SRC_FPS - 1
    assert abs(src[-1] - last) <= 1 and (np.abs(src[-10:] - src[-1]) <= 0).all()
    assert item["captions"] == [""] and item["storyboard"] == ""
    assert item["shot_starts"].tolist() == [0.0]


def test_empty_folder_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no videos here")
    with pytest.raises(ValueError, match=r"no videos \(\*\.mp4, \*\.mov, \*\.webm, \*\.mkv\) under"):
        VideoFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="no videos"):
        VideoFolderDataset(tmp_path / "missing")


def test_only_unreadable_videos_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="skipping unreadable"):
        with pytest.raises(ValueError, match="no readable videos"):
            VideoFolderDataset(tmp_path)


def test_shift_storyboard():
    sb = parse_storyboard("0s: a\n3s: b\n6.5s: c\ntotal: 10s")
    w = shift_storyboard(sb, 2.0, 4.0)
    assert [(s.start, s.end, s.prompt) for s in w.shots] == [(0.0, 1.0, "a"), (1.0, 4.0, "b")]
    w = shift_storyboard(sb, 8.0, 4.0)  # past the end: last shot extended
    assert [(s.start, s.end, s.prompt) for s in w.shots] == [(0.0, 4.0, "c")]
