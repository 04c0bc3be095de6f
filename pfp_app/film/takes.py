"""Earlier takes of a project: before a Generate would replace finished segments (another storyboard, seed
or steps), the project's current state is kept in `takes/NNN/`, so nothing a creator made is lost silently.

A take holds storyboard.txt, settings.json, film.mp4 and segments/ as they were. Files are hard-linked
where the file system allows (no extra disk: the project replaces files by rename, never rewrites them in
place, so the take's links keep the old bytes), else copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .project import Project

TAKES_DIR = "takes"
_TOP_FILES = ("storyboard.txt", "settings.json", "film.mp4", "storyboard_draft.txt")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def list_takes(project: Project) -> list[Path]:
    folder = project.folder / TAKES_DIR
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []


def keep_take(project: Project) -> Path | None:
    """Keep the project's current segments and storyboard as the next `takes/NNN/`; None if it has none."""
    if project.finished_segments() == 0:
        return None
    taken = list_takes(project)
    number = int(taken[-1].name) + 1 if taken else 1
    final = project.folder / TAKES_DIR / f"{number:03d}"
    tmp = project.folder / TAKES_DIR / f".{number:03d}.partial"  # renamed when complete: no half takes
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "segments").mkdir(parents=True)
    for name in _TOP_FILES:
        if (project.folder / name).is_file():
            _link_or_copy(project.folder / name, tmp / name)
    for src in sorted(project.segments_dir.iterdir()):
        if src.is_file() and src.name.startswith("seg_"):
            _link_or_copy(src, tmp / "segments" / src.name)
    os.replace(tmp, final)
    return final
