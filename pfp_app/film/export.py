"""Re-opening an export: an MP4 written by PFP Studio carries its model, seeds, steps and storyboard in its
comment (first line `PFP Studio | model=... seed=3 steps=8 guidance=3 ...`, then the storyboard), and, when it was
exported with its footage, `footage_frames=N`: its first N frames are that footage at the model's size and rate.

`read_export_record` finds out whether a file is such an export; `restore_into` regenerates its project from
the record (storyboard, per-segment seeds, steps, guidance; the footage taken back from the file's first frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io.video import VideoReadError, read_mp4_comment

MARK = "PFP Studio |"


@dataclass
class ExportRecord:
    path: Path
    model: str | None
    seeds: dict[int, int]  # segment -> seed; {-1: s} when every segment used seed s
    steps: int | None
    storyboard: str
    footage_frames: int = 0  # the file's first N frames are the footage
    footage_excluded: bool = False  # the project had footage; the file holds the generated part only
    fields: dict[str, str] = field(default_factory=dict)
    guidance: float | None = None  # classifier-free guidance; None: not recorded (exports before it was)
    guidance_2: float | None = None  # guidance below `boundary` (two-scale guidance); None: one scale throughout
    boundary: float | None = None
    start_guidance: float | None = None  # a shot's first segment (flow.SamplerSettings); None: as elsewhere
    start_guidance_2: float | None = None
    context_latents: int = 0  # within a shot (flow.SamplerSettings); exports from before it was recorded used none
    memory_guidance: float = 0.0  # within a shot (flow.SamplerSettings); likewise
    recent_latents: int = 0  # within a shot (flow.SamplerSettings); likewise
    return_latents: int = 0  # at a return (flow.SamplerSettings); likewise
    return_start: bool = False  # return_latents_from == "start"
    return_recent: bool = False  # return_latents_as_recent
    return_memory_guidance: float = 0.0

    def generation_settings(self, seed: int):
        """The settings that made the export's segments (with `seed`). A record with one guidance scale keeps one
        (GenerationSettings: a guidance scale given alone), whatever the model's default is now."""
        from ..sampling.pipeline import GenerationSettings

        return GenerationSettings(seed=seed, steps=self.steps, guidance_scale=self.guidance,
                                  guidance_scale_2=self.guidance_2, boundary_ratio=self.boundary,
                                  shot_start_guidance_scale=self.start_guidance,
                                  shot_start_guidance_scale_2=self.start_guidance_2,
                                  context_latents=self.context_latents, memory_guidance_scale=self.memory_guidance,
                                  recent_latents=self.recent_latents, return_latents=self.return_latents,
                                  return_latents_from="start" if self.return_start else "end",
                                  return_latents_as_recent=self.return_recent,
                                  return_memory_guidance_scale=self.return_memory_guidance)

    @property
    def seed(self) -> int:
        """The first segment's seed (the project's seed)."""
        return self.seeds.get(-1, self.seeds.get(0, 0))

    def seed_of(self, segment: int) -> int:
        if -1 in self.seeds:
            return self.seeds[-1]
        known = [k for k in sorted(self.seeds) if k <= segment]
        return self.seeds[known[-1]] if known else self.seed

    def describe(self) -> str:
        seeds = (f"seed {self.seed}" if -1 in self.seeds else
                 "seeds " + ", ".join(f"segment {k + 1}: {v}" for k, v in sorted(self.seeds.items())))
        shots = sum(1 for line in self.storyboard.splitlines() if line.strip() and not line.lower().startswith(("end", "total", "#")))
        foot = (f", starting with {self.footage_frames} frames of footage" if self.footage_frames else
                ", exported without its footage" if self.footage_excluded else "")
        guidance = f", guidance {self.guidance:g}" if self.guidance is not None else ""
        if self.guidance_2 is not None:
            guidance += f" (then {self.guidance_2:g} below timestep ratio {self.boundary:g})"
        if self.start_guidance is not None:
            then = f", then {self.start_guidance_2:g} below {self.boundary:g}" if self.start_guidance_2 is not None else ""
            guidance += f" ({self.start_guidance:g} on a shot's first segment{then})"
        context = f", {self.context_latents} context latent(s) within a shot" if self.context_latents else ""
        if self.memory_guidance:
            context += f", memory guidance {self.memory_guidance:g} within a shot"
        if self.recent_latents:
            context += f", {self.recent_latents} recent latent(s) at full resolution within a shot"
        if self.return_latents:
            which = "first" if self.return_start else "last"
            context += f", a return gets its earlier shot's {which} {self.return_latents} latent(s)"
            context += " as the frames it continues" if self.return_recent else ""
        if self.return_memory_guidance:
            context += f", memory guidance {self.return_memory_guidance:g} at a return"
        return f"model {self.model}, {seeds}, {self.steps or 'default'} steps{guidance}{context}, {shots} shots{foot}"


def _per_segment(value: str) -> dict[int, int]:
    """'3' -> {-1: 3}; '0:3,1:3,2:7' -> {0: 3, 1: 3, 2: 7}."""
    if ":" not in value:
        return {-1: int(value)}
    out = {}
    for part in value.split(","):
        k, v = part.split(":", 1)
        out[int(k)] = int(v)
    return out


def guidance_comment(sampler: dict) -> str:
    """The guidance fields of an export's first comment line (read back by parse_export_comment), from a project's
    recorded sampler settings (asdict of flow.SamplerSettings): ' guidance=3 start_guidance=6 start_guidance2=1
    boundary=0.6 context=1 memory_guidance=2 recent=1' (and return=1 return_start=1 return_recent=1 return_guidance=2
    where a return was given frames or guidance); '' where none was recorded."""
    values = {"guidance": sampler.get("guidance_scale"), "guidance2": sampler.get("guidance_scale_2"),
              "start_guidance": sampler.get("shot_start_guidance_scale")}
    if values["start_guidance"] is not None:
        values["start_guidance2"] = sampler.get("shot_start_guidance_scale_2")
    if values["guidance2"] is not None or values["start_guidance"] is not None:
        values["boundary"] = sampler.get("boundary_ratio", 0.875)  # flow.SamplerSettings' default
    if sampler.get("context_latents"):
        values["context"] = sampler["context_latents"]
    if sampler.get("memory_guidance_scale"):
        values["memory_guidance"] = sampler["memory_guidance_scale"]
    if sampler.get("recent_latents"):
        values["recent"] = sampler["recent_latents"]
    if sampler.get("return_latents"):
        values["return"] = sampler["return_latents"]
        values["return_start"] = 1 if sampler.get("return_latents_from") == "start" else None
        values["return_recent"] = 1 if sampler.get("return_latents_as_recent") else None
    if sampler.get("return_memory_guidance_scale"):
        values["return_guidance"] = sampler["return_memory_guidance_scale"]
    return "".join(f" {k}={v:g}" for k, v in values.items() if v is not None)


def parse_export_comment(comment: str | None, path: str | Path = "") -> ExportRecord | None:
    """The record in an export's comment, or None when the comment is not PFP Studio's."""
    if not comment or not comment.startswith(MARK):
        return None
    head, _, storyboard = comment.partition("\n")
    fields = dict(tok.split("=", 1) for tok in head[len(MARK):].split() if "=" in tok)
    try:
        seeds = _per_segment(fields["seeds"]) if "seeds" in fields else _per_segment(fields.get("seed", "0"))
        steps_field = fields.get("steps") or fields.get("stepss")  # per-segment steps: keep the first
        steps = None if steps_field in (None, "None") else next(iter(_per_segment(steps_field).values()))
        frames = int(fields.get("footage_frames", 0))
        guidance = float(fields["guidance"]) if fields.get("guidance") not in (None, "None") else None
        scales = {k: float(fields[k]) if k in fields else None
                  for k in ("guidance2", "boundary", "start_guidance", "start_guidance2")}
        if (scales["guidance2"] is not None or scales["start_guidance"] is not None) != (scales["boundary"] is not None):
            raise KeyError("guidance2 / start_guidance and boundary go together")
        context = int(fields.get("context", 0))
        memory_guidance = float(fields.get("memory_guidance", 0.0))
        recent = int(fields.get("recent", 0))
        returns = (int(fields.get("return", 0)), fields.get("return_start") == "1", fields.get("return_recent") == "1",
                   float(fields.get("return_guidance", 0.0)))
        if context < 0 or recent < 0 or returns[0] < 0:
            raise ValueError("negative context")
    except (ValueError, KeyError):
        raise ValueError(f"'{Path(path).name}' has a PFP Studio comment that cannot be read: {head!r}") from None
    return ExportRecord(Path(path), fields.get("model"), seeds, steps, storyboard, frames,
                        fields.get("footage") == "excluded", fields, guidance, scales["guidance2"], scales["boundary"],
                        scales["start_guidance"], scales["start_guidance2"], context, memory_guidance, recent,
                        *returns)


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
    from .footage import FootageError, footage_from_frames
    from ..io.video import read_video

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


def generate_with_seeds(pipe, storyboard, record: ExportRecord, project, start: int = 0, **callbacks) -> None:
    """Generate the storyboard into `project` with each segment's recorded seed: the seed changes only where
    a shot was regenerated with a new one (every later segment has it), so runs of one seed are generated in
    turn, each stopped where the next seed begins."""
    from ..sampling.pipeline import GenerationStopped

    from .footage import has_footage

    n = len(pipe.schedule(storyboard, after_footage=has_footage(project)))
    k = start
    while k < n:
        seed = record.seed_of(k)
        end = k + 1
        while end < n and record.seed_of(end) == seed:
            end += 1
        stop_at = end

        def should_stop(stop_at=stop_at):
            return project.finished_segments() >= stop_at

        try:
            pipe.generate(storyboard, record.generation_settings(seed), project, start_segment=k,
                          should_stop=should_stop, **callbacks)
        except GenerationStopped:
            pass
        k = end
