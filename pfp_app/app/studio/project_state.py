"""What the studio keeps in a project folder beyond the core's files, and how it reads it back.

- `segments/seg_007.json`: how segment 7 was made (prompt, times, seed, sampler, model), written as soon as
  the core has saved the segment; the core's `drop_segments_from` removes it with the segment.
- `storyboard_draft.txt`: the editor's text as last saved (comments kept); `storyboard.txt` is the core's
  copy of what was generated.
- `seeds.json`: segment -> seed, rewritten at every export, with the storyboard in the MP4 comment.
- `<projects>/.last`: the name of the last project opened, restored when the app starts again.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open

from ...io.atomic import atomic_write_text as _atomic_write
from ...sampling.pipeline import GenerationSettings, PFPPipeline, SegmentResult
from ...film.project import Project, ProjectError, safe_child
from ...film.storyboard import Segment
from ...io.video import frame_count, frames_to_tensor, read_video

LAST_FILE = ".last"
DRAFT_FILE = "storyboard_draft.txt"
SEEDS_FILE = "seeds.json"
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


# per-segment records -----------------------------------------------------------------------------


def record_path(project: Project, index: int) -> Path:
    return project.segments_dir / f"seg_{index:03d}.json"


def segment_record(pipe: PFPPipeline, settings: GenerationSettings, seg: Segment) -> dict:
    return {"prompt": seg.prompt, "start": seg.start, "end": seg.end, "shot_index": seg.shot_index,
            "seed": int(settings.seed), "model": pipe.model.name,
            "sampler": asdict(settings.sampler_settings(pipe.model))}


def write_record(project: Project, pipe: PFPPipeline, settings: GenerationSettings, result: SegmentResult) -> None:
    rec = segment_record(pipe, settings, result.segment)
    rec.update(memory_tokens=result.memory_tokens, seconds=round(result.seconds, 3))
    _atomic_write(record_path(project, result.segment.index), json.dumps(rec, indent=2))


def read_record(project: Project, index: int) -> dict | None:
    """How segment `index` was made: its JSON record, or (for segments made elsewhere, e.g. by the CLI)
    the latents' metadata plus the project's settings."""
    path = record_path(project, index)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    latents = project.segment_latents_path(index)
    if not latents.is_file():
        return None
    with safe_open(str(latents), "pt") as f:
        meta = f.metadata() or {}
    s = project.read_settings()
    seg_s = float(s.get("segment_seconds", 0.0))
    try:
        seed = int(meta.get("seed", s.get("seed")))
    except (TypeError, ValueError):
        return None
    return {"prompt": meta.get("prompt"), "start": index * seg_s, "end": (index + 1) * seg_s, "seed": seed,
            "model": s.get("model"), "sampler": s.get("sampler_settings")}


def reusable_prefix(project: Project, pipe: PFPPipeline, segments: list[Segment]) -> int:
    """How many leading finished segments were made from the same prompts and times by the same model as
    `segments` would be: the history that can be kept (seeds and steps are the caller's concern)."""
    k = 0
    for seg in segments[: project.finished_segments()]:
        rec = read_record(project, seg.index)
        want = {"prompt": seg.prompt, "start": seg.start, "end": seg.end, "model": pipe.model.name}
        if rec is None or any(rec.get(key) != v for key, v in want.items()):
            break
        k += 1
    return k


def _per_segment(project: Project, field) -> dict[int, object]:
    out = {}
    for i in range(project.finished_segments()):
        rec = read_record(project, i)
        if rec is not None:
            out[i] = field(rec)
    return out


def seeds(project: Project) -> dict[int, int]:
    return _per_segment(project, lambda rec: rec["seed"])


def _summary(name: str, values: dict[int, object]) -> str:
    """'seed=3' when every segment agrees, else 'seeds=0:3,1:3,2:7' (segment:value)."""
    uniq = set(values.values())
    if len(uniq) == 1:
        return f"{name}={next(iter(uniq))}"
    return f"{name}s=" + ",".join(f"{i}:{v}" for i, v in values.items())


def reproduce_note(project: Project) -> str:
    """The MP4 comment: model, seed and steps (per segment where they differ), memory rate, storyboard."""
    s = project.read_settings()
    steps = _per_segment(project, lambda rec: (rec.get("sampler") or {}).get("steps"))
    return (f"PFP Studio | model={s.get('model')} {_summary('seed', seeds(project))} {_summary('steps', steps)} "
            f"memory_rate={s.get('memory_rate')}\n{project.read_storyboard()}")


def write_seeds(project: Project) -> Path:
    path = project.folder / SEEDS_FILE
    _atomic_write(path, json.dumps({str(k): v for k, v in seeds(project).items()}, indent=2))
    return path


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
    rec = read_record(project, 0)
    return None if rec is None else rec.get("seed")
