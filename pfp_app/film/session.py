"""A generation session: the pipeline's segments, kept in a project as they are made.

The pipeline generates and writes nothing; this layer owns what is on disk. One policy for the CLI and the
studio decides what a run keeps: the longest prefix of finished segments that still fit the storyboard (same
prompt, times and model name) and were made with this run's sampler settings. A plain run asks segment 0 for the
film's seed and keeps later segments whatever their seed (a shot regenerated with its own seed stays as it was);
a restore asks every segment for its recorded seed; a regenerate keeps what fits before its shot. Before anything
finished is replaced, the project's current state is kept as a take (`takes/NNN/`), so nothing a creator made is
lost.

A run reports typed events through one callback: `Started`, `Step` (every denoising step), `SegmentDone` (a
segment is on disk), then one of `Done`, `Stopped` or `Failed`, which `run` also returns. The CLI prints them; the studio's
job queue stores them and its views format them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..sampling.pipeline import GenerationStopped, PFPPipeline
from ..sampling.settings import SamplerSettings
from .export import ExportRecord
from .footage import footage_record, has_footage, load_footage_latents, remove_footage, save_footage
from .project import Project
from .storyboard import Storyboard, parse_storyboard
from .takes import keep_take
from .timeline import TIMELINE, TimedSegment, TimeGrid


# ---- events ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    kept: int  # finished segments the run keeps as they are
    num_segments: int
    take: Path | None  # where the segments it replaces were kept (takes/NNN/), if any


@dataclass(frozen=True)
class Step:
    segment: int  # index of the segment being sampled
    num_segments: int
    step: int  # steps done, 1..steps
    steps: int


@dataclass(frozen=True)
class SegmentDone:
    segment: int
    num_segments: int
    shot_index: int
    video: Path  # the segment's MP4 in the project
    seconds: float
    memory_tokens: int
    sampling_seconds: float = 0.0  # φ, text and denoising
    decoding_seconds: float = 0.0


@dataclass(frozen=True)
class Done:
    made: int
    kept: int  # finished segments the run started from
    num_segments: int
    seconds: float


@dataclass(frozen=True)
class Stopped:
    kept: int  # finished segments in the project now
    num_segments: int


@dataclass(frozen=True)
class Failed:
    error: BaseException
    kept: int
    num_segments: int

    @property
    def out_of_memory(self) -> bool:
        return is_out_of_memory(self.error)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA out-of-memory error (also as a RuntimeError from a kernel): the one message that suggests a profile."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


Event = Started | Step | SegmentDone | Done | Stopped | Failed
END_EVENTS = (Done, Stopped, Failed)


# ---- what a run does ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a run will do: the storyboard's segments, how many finished ones it keeps, and the seed and sampler of
    every segment it makes. Making a plan writes nothing."""

    text: str  # the storyboard as written (kept in the project)
    storyboard: Storyboard
    segments: list[TimedSegment]
    keep: int
    seeds: list[int]  # per segment (the run seed; its noise is segment_seed(seed, index))
    samplers: list[SamplerSettings]  # per segment

    @property
    def to_make(self) -> int:
        return len(self.segments) - self.keep


_SAME = ("prompt", "start", "end", "shot_index", "first_latent", "num_latents")


class GenerationSession:
    def __init__(self, pipe: PFPPipeline, project: Project):
        self.pipe = pipe
        self.project = project

    @property
    def model(self):
        return self.pipe.model

    def replace_footage(self, footage, source=None) -> Path | None:
        """Start the project from other footage (None: from nothing). Its finished segments were made from the old
        one: they are kept as a take (returned) and dropped."""
        take = keep_take(self.project) if self.project.finished_segments() else None
        self.project.drop_segments_from(0)
        if footage is not None:
            save_footage(self.project, footage, source)
        elif has_footage(self.project):
            remove_footage(self.project)
        return take

    # ---- planning --------------------------------------------------------------------------------------------------
    def plan(self, text: str, seed: int = 0, sampler: SamplerSettings | None = None,
             from_shot: int | None = None) -> Plan:
        """Generate the storyboard `text` with one seed and sampler (default: the model's), keeping the finished
        segments it would make again; from_shot: regenerate that shot and everything after it, keeping the
        segments before it that still fit the storyboard (whatever seed or settings made them)."""
        sampler = sampler or self.model.sampler
        sb, segments = self._segments(text)
        n = len(segments)
        first = n
        if from_shot is not None:
            first = next((s.index for s in segments if s.shot_index >= from_shot), None)
            if first is None:
                raise ValueError(f"shot {from_shot + 1} has no segment of its own (it is shorter than one segment)")
        seeds, samplers = [seed] * n, [sampler] * n
        if from_shot is None:  # segment 0 must be of the film's seed; later ones may be a regenerated shot's
            keep = self._prefix(segments, lambda k: (seed if k == 0 else None, sampler))
        else:
            keep = min(first, self._prefix(segments, lambda k: (None, None)))
            for k in range(keep):  # kept as they are: their own seed and settings
                rec = self.project.read_segment_record(k)
                seeds[k], samplers[k] = int(rec["seed"]), SamplerSettings.from_record(rec.get("sampler") or {},
                                                                                       self.model.sampler)
        return Plan(text, sb, segments, keep, seeds, samplers)

    def plan_restore(self, record: ExportRecord) -> Plan:
        """Regenerate an export's film: its storyboard, every segment with the seed and sampler it was made with."""
        sb, segments = self._segments(record.storyboard)
        seeds = [record.seed_of(s.index) for s in segments]
        samplers = [record.sampler_of(s.index, self.model.sampler) for s in segments]
        keep = self._prefix(segments, lambda k: (seeds[k], samplers[k]))
        return Plan(record.storyboard, sb, segments, keep, seeds, samplers)

    def _segments(self, text: str) -> tuple[Storyboard, list[TimedSegment]]:
        sb = parse_storyboard(text)
        return sb, self.pipe.schedule(sb, after_footage=has_footage(self.project))

    def _prefix(self, segments: list[TimedSegment], want: Callable[[int], tuple[int | None, SamplerSettings | None]]) -> int:
        """How many leading finished segments are what `segments` would make: same prompt, times and model, and,
        where `want(k)` names them, the same seed and sampler settings."""
        k = 0
        for seg in segments[: self.project.finished_segments()]:
            rec = self.project.read_segment_record(seg.index)
            if rec is None or rec.get("model") != self.model.name:
                break
            if any(rec.get(key) != v for key, v in asdict(seg).items() if key in _SAME):
                break
            seed, sampler = want(seg.index)
            if seed is not None and rec.get("seed") != seed:
                break
            if sampler is not None and rec.get("sampler") != sampler.to_record():
                break
            k += 1
        return k

    # ---- running ---------------------------------------------------------------------------------------------------
    def run(self, plan: Plan, emit: Callable[[Event], None] = lambda event: None,
            should_stop: Callable[[], bool] | None = None) -> Event:
        """Carry out `plan`: keep a take of what will be replaced, write the storyboard and settings, then every
        segment as it is made. Each event goes to `emit`; the last one (Done, Stopped or Failed) is returned."""
        t0 = time.perf_counter()
        n = len(plan.segments)
        try:
            take = keep_take(self.project) if self.project.finished_segments() > plan.keep else None
            self.project.drop_segments_from(plan.keep)
            self.project.write_storyboard(plan.text)
            self.project.write_settings(self.settings_record(plan))
            emit(Started(plan.keep, n, take))
            history = self.project.load_history(plan.keep) if plan.keep else None
            results = self.pipe.generate_segments(
                plan.segments, plan.seeds.__getitem__, plan.samplers.__getitem__, start=plan.keep, history=history,
                footage=load_footage_latents(self.project),
                on_step=lambda k, total, i, steps: emit(Step(k, total, i, steps)), should_stop=should_stop)
            for res in results:
                seg = res.segment
                self.project.save_segment(seg.index, res.latents[0], res.frames, self.model.video.fps,
                                          self.segment_record(res))
                emit(SegmentDone(seg.index, n, seg.shot_index, self.project.segment_video_path(seg.index), res.seconds,
                                 res.memory_tokens, res.sampling_seconds, res.decoding_seconds))
            end: Event = Done(plan.to_make, plan.keep, n, time.perf_counter() - t0)
        except GenerationStopped:
            end = Stopped(self.project.finished_segments(), n)
        except Exception as err:  # the caller decides: a user's mistake is one line, a bug keeps its traceback
            end = Failed(err, self.project.finished_segments(), n)
        emit(end)
        return end

    # ---- records -------------------------------------------------------------------------------------------------
    def segment_record(self, res) -> dict:
        seg = res.segment
        return {**{k: v for k, v in asdict(seg).items() if k in _SAME}, "seed": int(res.seed),
                "model": self.model.name, "sampler": res.sampler.to_record(), "memory_tokens": res.memory_tokens,
                "seconds": round(res.seconds, 3)}

    def settings_record(self, plan: Plan) -> dict:
        """settings.json: the run as a whole (what the project was last generated with)."""
        grid = TimeGrid.of(self.model, has_footage(self.project))
        enc = self.model.memory_encoder.config
        return {"timeline": TIMELINE, "film_frames": grid.film_frames(plan.storyboard.duration),
                "lead_frames": grid.lead_frames, "model": self.model.name, "trained": self.model.trained,
                "seed": plan.seeds[0] if plan.seeds else 0, "sampler_settings": plan.samplers[-1].to_record()
                if plan.samplers else self.model.sampler.to_record(),
                "video": asdict(self.model.video), "memory_rate": enc.rate, "memory_variant": enc.variant,
                "segment_seconds": self.pipe.segment_seconds, "num_segments": len(plan.segments),
                **footage_record(self.project)}


