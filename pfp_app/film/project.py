"""A project folder: the storyboard, the settings, and every finished segment, written as it is made.

Layout (all under one folder; nothing generated lives only in memory):
  storyboard.txt       the storyboard text as generated
  settings.json        model, seed, steps, sampler, fps, size, memory rate, segment schedule
  segments/seg_007.safetensors  latents (C, n, H', W') of segment 7, the history the memory is built from
  segments/seg_007.mp4          its decoded frames, playable on its own
  segments/seg_007.json         how it was made: prompt, times, seed, model, sampler settings
  film.mp4             the whole video, exported after generation
Writes go to a temporary name and are renamed, so a killed process never leaves a half file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safetensors import safe_open

from ..io.atomic import atomic_path, atomic_write_text, clean_stale_temps
from ..io.video import write_mp4

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


MARKER_FILE = ".pfp_project"  # written in every project folder: the app's own folders are told from a user's


def check_folder_for(folder: str | Path) -> None:
    """Refuse, before anything is written, a folder that the CLI must not write into: one it did not create (not
    empty, not a project). An absent or empty folder is fine; so is a project (what a run replaces there is kept as
    a take: `film/session.py`)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ProjectError(f"project folder '{folder}' is a file; choose another --project (nothing was written)")
    if not any(folder.iterdir()):
        return
    project_like = (folder / MARKER_FILE).is_file() or (folder / "segments" / "seg_000.safetensors").is_file()
    if not project_like:
        raise ProjectError(f"'{folder}' already exists and is not a PFP Studio project; choose another --project or "
                           "an empty folder (nothing was written)")


class Project:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.segments_dir = self.folder / "segments"
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        if not (self.folder / MARKER_FILE).is_file():
            atomic_write_text(self.folder / MARKER_FILE, '{"app": "PFP Studio"}\n')
        for folder in (self.folder, self.segments_dir, self.folder / "previews"):
            clean_stale_temps(folder)  # half files of a killed writer (a live writer's are kept)

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
        atomic_write_text(self.storyboard_path, text)

    def read_storyboard(self) -> str:
        return self.storyboard_path.read_text(encoding="utf-8") if self.storyboard_path.exists() else ""

    def write_settings(self, settings: dict) -> None:
        atomic_write_text(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))

    def read_settings(self) -> dict:
        return json.loads(self.settings_path.read_text(encoding="utf-8")) if self.settings_path.exists() else {}

    # segments ---------------------------------------------------------------------------------
    def segment_latents_path(self, index: int) -> Path:
        return self.segments_dir / f"seg_{index:03d}.safetensors"

    def segment_video_path(self, index: int) -> Path:
        return self.segments_dir / f"seg_{index:03d}.mp4"

    def segment_record_path(self, index: int) -> Path:
        return self.segments_dir / f"seg_{index:03d}.json"

    def save_segment(self, index: int, latents: torch.Tensor, frames: torch.Tensor, fps: float, record: dict) -> None:
        """One finished segment: its video (frames (3, T, H, W) in [-1, 1]), its record, then its latents
        (C, n, H', W'), whose presence marks it finished: a segment killed while being written is not one."""
        write_mp4(self.segment_video_path(index), frames, fps, crf=12)
        atomic_write_text(self.segment_record_path(index), json.dumps(record, indent=2))
        with atomic_path(self.segment_latents_path(index)) as tmp:
            save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp),
                      metadata={"prompt": str(record.get("prompt")), "seed": str(record.get("seed"))})

    def read_segment_record(self, index: int) -> dict | None:
        """How segment `index` was made (see save_segment); for a segment written before records were kept, what
        its latents' metadata and the project's settings say. None for a segment that is not finished."""
        path = self.segment_record_path(index)
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                pass
        latents = self.segment_latents_path(index)
        if not latents.is_file():
            return None
        with safe_open(str(latents), "pt") as f:
            meta = f.metadata() or {}
        s = self.read_settings()
        try:
            seed = int(meta.get("seed", s.get("seed")))
        except (TypeError, ValueError):
            return None
        return {"prompt": meta.get("prompt"), "seed": seed, "model": s.get("model"),
                "sampler": s.get("sampler_settings")}

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
