"""The film as an MP4 that can be made again: one writer, one record.

`write_film` joins the segments' MP4s (and, for the whole film, the project's footage first) into one H.264 file
whose comment is the export record: a first line `PFP Studio | {json}` with the model, the runs of segments (the
seed and the complete sampler settings each run was made with) and the footage's frame count, then the
storyboard. The CLI and the studio both export through it. `read_export_record` reads it back (also the
key=value records written before), and restoring an export regenerates its project run by run
(`film/session.py`), the footage taken back from the file's first frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.video import VideoReadError, frame_count, read_mp4_comment, read_video, video_info, write_mp4
from ..sampling.settings import SamplerSettings
from .footage import FootageError, footage_from_frames, footage_meta, footage_video_path, has_footage
from .project import Project

MARK = "PFP Studio |"
FORMAT = 2  # the JSON record; exports before it wrote key=value fields (read by `_parse_legacy`)


@dataclass(frozen=True)
class Run:
    """Segments `start`.. (up to the next run) made with one seed and one sampler.

    sampler: the settings as recorded. An export of this format records every field; one written before records
    what it knew, and the rest is the model's default (`ExportRecord.sampler_of`)."""

    start: int
    seed: int
    sampler: dict = field(default_factory=dict)


@dataclass
class ExportRecord:
    path: Path
    model: str | None
    runs: list[Run]
    storyboard: str
    footage_frames: int = 0  # the file's first N frames are the footage
    footage_excluded: bool = False  # the project had footage; the file holds the generated part only

    def run_of(self, segment: int) -> Run:
        """The run that made `segment`."""
        return ([r for r in self.runs if r.start <= segment] or self.runs[:1])[-1]

    @property
    def seed(self) -> int:
        """The first segment's seed (the project's seed)."""
        return self.runs[0].seed

    def seed_of(self, segment: int) -> int:
        return self.run_of(segment).seed

    def sampler_of(self, segment: int, model_default: SamplerSettings) -> SamplerSettings:
        """The settings segment `segment` was made with (fields an older record lacks: the model's default)."""
        return SamplerSettings.from_record(self.run_of(segment).sampler, model_default)

    def describe(self) -> str:
        seeds = (f"seed {self.seed}" if len({r.seed for r in self.runs}) == 1 else
                 "seeds " + ", ".join(f"segment {r.start + 1}: {r.seed}" for r in self.runs))
        steps = sorted({r.sampler["steps"] for r in self.runs if r.sampler.get("steps") is not None})
        shots = sum(1 for line in self.storyboard.splitlines()
                    if line.strip() and not line.lower().startswith(("end", "total", "#")))
        foot = (f", starting with {self.footage_frames} frames of footage" if self.footage_frames else
                ", exported without its footage" if self.footage_excluded else "")
        step_text = "/".join(str(s) for s in steps) if steps else "default"
        return f"model {self.model}, {seeds}, {step_text} steps, {shots} shots{foot}"


# ---- the record of a project's segments ------------------------------------------------------------------------

def project_runs(project: Project, segments: range) -> list[Run]:
    """The runs of `segments` from the project's per-segment records (seed and sampler of each segment)."""
    runs: list[Run] = []
    for i in segments:
        rec = project.read_segment_record(i)
        if rec is None:
            raise ValueError(f"segment {i + 1} of '{project.folder.name}' has no record of how it was made")
        seed, sampler = int(rec["seed"]), dict(rec.get("sampler") or {})
        if not runs or (runs[-1].seed, runs[-1].sampler) != (seed, sampler):
            runs.append(Run(i, seed, sampler))
    return runs


def export_comment(model: str | None, runs: list[Run], storyboard: str, footage_frames: int | None = None,
                   footage_excluded: bool = False) -> str:
    head = {"format": FORMAT, "model": model,
            "runs": [{"start": r.start, "seed": r.seed, "sampler": r.sampler} for r in runs]}
    if footage_frames:
        head["footage_frames"] = int(footage_frames)
    if footage_excluded:
        head["footage"] = "excluded"
    return f"{MARK} {json.dumps(head, separators=(',', ':'))}\n{storyboard}"


def write_film(project: Project, out: str | Path | None = None, segments: range | None = None, fps: int | None = None,
               crf: int = 18, with_footage: bool = True) -> Path:
    """The one export writer: `segments` (default: all finished; a shot's for a shot export) as H.264 MP4 at
    `out` (default the project's film.mp4), the export record in its comment.

    with_footage: a range that starts the film also starts with the project's footage (else: the generated part
    only, said in the record). fps: another frame rate for the file, frames resampled by nearest frame, duration
    kept (the record then describes a film at another rate: it still restores, at the model's)."""
    segments = segments if segments is not None else range(project.finished_segments())
    if len(segments) == 0:
        raise ValueError("nothing to export: the project has no finished segment")
    settings = project.read_settings()
    lead = footage_video_path(project) if with_footage and segments.start == 0 and has_footage(project) else None
    n_lead = int(footage_meta(project)["frames"]) if lead is not None else None
    excluded = has_footage(project) and lead is None
    # every finished segment's run, also for a shot's file: restoring any export regenerates the whole film
    comment = export_comment(settings.get("model"), project_runs(project, range(project.finished_segments())),
                             project.read_storyboard(), n_lead, excluded)
    paths = ([lead] if lead is not None else []) + [project.segment_video_path(i) for i in segments]
    src_fps = video_info(paths[-1]).fps  # the rate the segments were made at (the model's)
    fps = fps or src_fps
    return write_mp4(out or project.film_path, stream_frames(paths, src_fps, fps), fps, crf=crf, comment=comment)


def stream_frames(paths: list[Path], src_fps: float, fps: float) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames of the files in order, one file in memory at a time (a 10-minute film held whole
    as float32 took ~1 GB at 128x128); resampled to `fps` by nearest frame, duration kept."""
    counts = [frame_count(p) for p in paths]  # our own segment files: complete, written atomically
    total = sum(counts)
    n_out = total if fps == src_fps else max(1, round(total * fps / src_fps))
    i_out, first = 0, 0
    for path, count in zip(paths, counts):
        seg = read_video(path)[0]  # (T, H, W, 3) uint8
        while i_out < n_out:
            j = max(first, min(total - 1, round(i_out * src_fps / fps)))  # max: a segment shorter than its header
            if j >= first + len(seg):
                break
            yield seg[j - first]
            i_out += 1
        first += count


# ---- reading an export back --------------------------------------------------------------------------------------

def parse_export_comment(comment: str | None, path: str | Path = "") -> ExportRecord | None:
    """The record in an export's comment, or None when the comment is not PFP Studio's."""
    if not comment or not comment.startswith(MARK):
        return None
    head, _, storyboard = comment.partition("\n")
    body = head[len(MARK):].strip()
    try:
        if body.startswith("{"):
            return _parse_json(body, storyboard, Path(path))
        return _parse_legacy(body, storyboard, Path(path))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"'{Path(path).name}' has a PFP Studio comment that cannot be read: {head[:200]!r}") from None


def _parse_json(body: str, storyboard: str, path: Path) -> ExportRecord:
    rec = json.loads(body)
    runs = [Run(int(r["start"]), int(r["seed"]), dict(r["sampler"])) for r in rec["runs"]]
    if not runs or runs[0].start < 0 or any(b.start <= a.start for a, b in zip(runs, runs[1:])):
        raise ValueError("runs must increase")
    for r in runs:
        SamplerSettings.from_record(r.sampler)  # unknown or malformed fields: refused here, not mid-restore
    frames = int(rec.get("footage_frames", 0))
    if frames < 0:
        raise ValueError("negative footage_frames")
    return ExportRecord(path, rec.get("model"), runs, storyboard, frames, rec.get("footage") == "excluded")


# The key=value records written before FORMAT 2. The CLI wrote its sampler fields (a field it left out was off),
# the studio only the model, seed(s), step(s) and memory rate (it sampled with the model's defaults).
_LEGACY_FLOATS = {"guidance": "guidance_scale", "guidance2": "guidance_scale_2", "boundary": "boundary_ratio",
                  "start_guidance": "shot_start_guidance_scale", "start_guidance2": "shot_start_guidance_scale_2",
                  "memory_guidance": "memory_guidance_scale", "return_guidance": "return_memory_guidance_scale"}
_LEGACY_INTS = {"context": "context_latents", "recent": "recent_latents", "return": "return_latents"}


def _per_segment(value: str) -> dict[int, int]:
    """'3' -> {-1: 3}; '0:3,1:3,2:7' -> {0: 3, 1: 3, 2: 7}."""
    if ":" not in value:
        return {-1: int(value)}
    return {int(k): int(v) for k, v in (part.split(":", 1) for part in value.split(","))}


def _parse_legacy(body: str, storyboard: str, path: Path) -> ExportRecord:
    fields = dict(tok.split("=", 1) for tok in body.split() if "=" in tok)
    seeds = _per_segment(fields["seeds"]) if "seeds" in fields else _per_segment(fields.get("seed", "0"))
    steps_field = fields.get("steps") or fields.get("stepss")  # per-segment steps: keep the first
    sampler: dict = {}
    if steps_field not in (None, "None"):
        sampler["steps"] = next(iter(_per_segment(steps_field).values()))
    if fields.get("guidance") not in (None, "None"):  # the CLI's record: what it does not name was off
        values = {name: float(fields[key]) for key, name in _LEGACY_FLOATS.items() if key in fields}
        values.update({name: int(fields[key]) for key, name in _LEGACY_INTS.items() if key in fields})
        if (("guidance_scale_2" in values or "shot_start_guidance_scale" in values)
                != ("boundary_ratio" in values)):
            raise KeyError("guidance2 / start_guidance and boundary go together")
        if any(values.get(name, 0) < 0 for name in _LEGACY_INTS.values()):
            raise ValueError("negative latent count")
        sampler.update({"guidance_scale_2": None, "shot_start_guidance_scale": None,
                        "shot_start_guidance_scale_2": None, "context_latents": 0, "memory_guidance_scale": 0.0,
                        "recent_latents": 0, "return_latents": 0, "return_memory_guidance_scale": 0.0,
                        "return_latents_from": "start" if fields.get("return_start") == "1" else "end",
                        "return_latents_as_recent": fields.get("return_recent") == "1", **values})
        SamplerSettings.from_record(sampler)
    runs = ([Run(0, seeds[-1], sampler)] if -1 in seeds else
            [Run(k, s, sampler) for k, s in sorted(seeds.items())
             if k == min(seeds) or s != seeds[max(j for j in seeds if j < k)]])
    if runs[0].start != 0:
        runs[0] = Run(0, runs[0].seed, sampler)
    return ExportRecord(path, fields.get("model"), runs, storyboard, int(fields.get("footage_frames", 0)),
                        fields.get("footage") == "excluded")


def read_export_record(path: str | Path) -> ExportRecord | None:
    """The record of an MP4 exported by PFP Studio; None for any other video (or a file that is not one)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        return None
    try:
        return parse_export_comment(read_mp4_comment(p), p)
    except VideoReadError:
        return None


def restore_footage(pipe, record: ExportRecord):
    """The footage of a restored project: the export's first `footage_frames` frames (None without footage)."""
    if record.footage_excluded:
        raise FootageError(f"'{record.path.name}' was exported without its footage (generated part only), so its "
                           "project cannot be restored from it; use the export made 'with the footage'")
    if not record.footage_frames:
        return None
    v = pipe.model.video
    frames, _ = read_video(record.path, max_frames=record.footage_frames)
    if frames.shape[1:3] != (v.height, v.width):
        raise FootageError(f"'{record.path.name}' is {frames.shape[2]}×{frames.shape[1]}, the model makes "
                           f"{v.width}×{v.height}: restore it with the model it was made with ({record.model})")
    return footage_from_frames(pipe, frames, record.path.name)
