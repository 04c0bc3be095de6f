"""A project folder: the storyboard, the settings, and every finished segment, written as it is made.

Layout (all under one folder; nothing generated lives only in memory):
  storyboard.txt       the storyboard text as generated
  settings.json        model, seed, steps, sampler, fps, size, memory rate, segment schedule
  segments/seg_007.safetensors  latents (C, n, H', W') of segment 7, the history the memory is built from
  segments/seg_007.mp4          its decoded frames, playable on its own
  film.mp4             the whole video, exported after generation
Writes go to a temporary name and are renamed, so a killed process never leaves a half file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")


class ProjectError(ValueError):
    pass


def safe_child(root: str | Path, name: str) -> Path:
    """root / name for a user-given name, refusing anything that would leave root (.., /, odd names)."""
    root = Path(root).resolve()
    if not _SAFE_NAME.match(name) or name in (".", "..") or ".." in name:
        raise ProjectError(f"invalid name {name!r}: use letters, digits, spaces, '.', '_' or '-' (at most 80)")
    path = (root / name).resolve()
    if path.parent != root:
        raise ProjectError(f"invalid name {name!r}: it must stay inside '{root}'")
    return path


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Project:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.segments_dir = self.folder / "segments"
        self.segments_dir.mkdir(parents=True, exist_ok=True)

    # storyboard and settings ----------------------------------------------------------------
    @property
    def storyboard_path(self) -> Path:
        return self.folder / "storyboard.txt"

    @property
    def settings_path(self) -> Path:
        return self.folder / "settings.json"

    @property
    def film_path(self) -> Path:
        return self.folder / "film.mp4"

    def write_storyboard(self, text: str) -> None:
        _atomic_write_bytes(self.storyboard_path, text.encode())

    def read_storyboard(self) -> str:
        return self.storyboard_path.read_text() if self.storyboard_path.exists() else ""

    def write_settings(self, settings: dict) -> None:
        _atomic_write_bytes(self.settings_path, json.dumps(settings, indent=2, sort_keys=True).encode())

    def read_settings(self) -> dict:
        return json.loads(self.settings_path.read_text()) if self.settings_path.exists() else {}

    # segments ---------------------------------------------------------------------------------
    def segment_latents_path(self, index: int) -> Path:
        return self.segments_dir / f"seg_{index:03d}.safetensors"

    def segment_video_path(self, index: int) -> Path:
        return self.segments_dir / f"seg_{index:03d}.mp4"

    def save_segment_latents(self, index: int, latents: torch.Tensor, meta: dict) -> Path:
        """latents (C, n, H', W') of one segment."""
        path = self.segment_latents_path(index)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={k: str(v) for k, v in meta.items()})
        os.replace(tmp, path)
        return path

    def finished_segments(self) -> int:
        """Number of consecutive segments 0..k-1 whose latents are on disk."""
        k = 0
        while self.segment_latents_path(k).exists():
            k += 1
        return k

    def load_history(self, num_segments: int | None = None) -> torch.Tensor | None:
        """Latents (1, C, T', H', W') of segments 0..num_segments-1 concatenated in time, or None."""
        n = self.finished_segments() if num_segments is None else num_segments
        parts = [load_file(str(self.segment_latents_path(i)))["latents"] for i in range(n)]
        return torch.cat(parts, dim=1)[None] if parts else None

    def drop_segments_from(self, index: int) -> None:
        """Delete segments index, index+1, ... (before regenerating them from a new history)."""
        for path in sorted(self.segments_dir.glob("seg_*")):
            m = re.match(r"seg_(\d+)\.", path.name)
            if m and int(m.group(1)) >= index:
                path.unlink()
