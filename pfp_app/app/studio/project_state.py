"""What the studio keeps in a project folder beyond the core's files, and how it reads it back.

- `storyboard_draft.txt`: the editor's text as last saved (comments kept); `storyboard.txt` is the core's
  copy of what was generated.
- `<projects>/.last`: the name of the last project opened, restored when the app starts again.
How each segment was made (`segments/seg_007.json`) is the core's record (`film/project.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...io.atomic import atomic_write_text as _atomic_write
from ...film.project import Project, ProjectError, safe_child
from ...io.video import frame_count, frames_to_tensor, read_video

LAST_FILE = ".last"
DRAFT_FILE = "storyboard_draft.txt"
_ANY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")


def project_folder(root: str | Path, name: str) -> Path:
    """The folder of a user-named project; ProjectError for names that could leave `root`."""
    return safe_child(root, (name or "").strip())


def open_project(root: str | Path, name: str) -> Project:
    return Project(project_folder(root, name))


def list_projects(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _ANY_NAME.match(p.name) and ".." not in p.name)


def remember_last(root: str | Path, name: str) -> None:
    project_folder(root, name)  # validates
    Path(root).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(root) / LAST_FILE, name.strip())


def last_project(root: str | Path) -> str | None:
    path = Path(root) / LAST_FILE
    if not path.is_file():
        return None
    name = path.read_text().strip()
    try:
        folder = project_folder(root, name)
    except ProjectError:
        return None
    return name if folder.is_dir() else None


def save_draft(project: Project, text: str) -> None:
    _atomic_write(project.folder / DRAFT_FILE, text)


def read_editor_text(project: Project) -> str:
    """The text to show when a project opens: the saved draft if newer than the generated storyboard."""
    draft = project.folder / DRAFT_FILE
    sb = project.storyboard_path
    if draft.is_file() and (not sb.is_file() or draft.stat().st_mtime_ns >= sb.stat().st_mtime_ns):
        return draft.read_text(encoding="utf-8", errors="replace")
    return sb.read_text(encoding="utf-8", errors="replace") if sb.is_file() else ""


# the film as generation left it -------------------------------------------------------------------


def lead_frames(project: Project) -> int:
    """Pixel frames of the history's first latent frame that the film leaves out (0 for projects made before
    shot-aligned timelines, whose film starts with it)."""
    s = project.read_settings()
    return int(s.get("lead_frames", 0)) if "timeline" in s else 0


def film_frame_count(project: Project) -> int:
    return sum(frame_count(project.segment_video_path(i)) for i in range(project.finished_segments()))


def read_film_frames(project: Project, num_segments: int) -> torch.Tensor:
    """The film's frames (3, T, H, W) in [-1, 1], from the MP4s generation wrote: the inspector's true frames,
    without decoding the history again."""
    return torch.cat([frames_to_tensor(read_video(project.segment_video_path(i))[0]) for i in range(num_segments)],
                     dim=1)


def first_seed(project: Project) -> int | None:
    """The seed the film was generated with (segment 0's: a regenerated shot may use another)."""
    rec = project.read_segment_record(0)
    return None if rec is None else rec.get("seed")
