"""Storyboard -> one continuous video, segment by segment, each seeing the whole history through φ.

Thin orchestration (diffusers-pipeline style) over the model bundle:
  for each segment: φ(history latents) -> sample the segment -> decode -> save -> append.
φ is causal in time, so the memory is extended incrementally instead of re-encoding the history.
`recall` reconstructs any past frame from φ(history) alone: the memory inspector.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ..model.memory_dit import history_recent_tokens, join_memory
from ..model.causal_decode import StreamingDecoder
from ..film.export import guidance_comment
from ..model.fast_conv import use_onednn_conv3d
from .flow import SamplerSettings, sample
from ..film.footage import (footage_comment, footage_meta, footage_record, footage_video_path, has_footage,
                      load_footage_latents)
from ..model.memory_encoder import MemoryCache
from ..evaluation.metrics import history_mean_frame, psnr, ssim
from ..model.bundle import PFPModel
from ..film.project import Project
from ..film.storyboard import Segment, Storyboard, format_storyboard, parse_storyboard
from ..film.timeline import TIMELINE, TimedSegment, TimeGrid, shot_aligned_schedule
from ..io.video import tensor_to_frames, write_mp4


def segment_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed per segment: regenerating segment k alone reproduces it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


@dataclass
class GenerationSettings:
    seed: int = 0
    steps: int | None = None  # None: the model's default
    sampler: str | None = None
    shift: float | None = None
    guidance_scale: float | None = None
    # None: the model's (flow.SamplerSettings). A guidance_scale given alone is one scale throughout, for every
    # segment (the CLI's --guidance, and exports that record one scale)
    guidance_scale_2: float | None = None
    boundary_ratio: float | None = None
    shot_start_guidance_scale: float | None = None
    shot_start_guidance_scale_2: float | None = None
    context_latents: int | None = None  # None: the model's (flow.SamplerSettings.context_latents)
    memory_guidance_scale: float | None = None  # None: the model's (flow.SamplerSettings.memory_guidance_scale)
    recent_latents: int | None = None  # None: the model's (flow.SamplerSettings.recent_latents)
    return_latents: int | None = None  # None: the model's (flow.SamplerSettings.return_latents)
    return_memory_guidance_scale: float | None = None  # None: the model's (flow.SamplerSettings)
    return_latents_from: str | None = None  # "end" / "start"; None: the model's (flow.SamplerSettings)
    return_latents_as_recent: bool | None = None  # None: the model's (flow.SamplerSettings)

    def sampler_settings(self, model: PFPModel) -> SamplerSettings:
        v = model.video
        alone = self.guidance_scale is not None and all(
            x is None for x in (self.guidance_scale_2, self.boundary_ratio, self.shot_start_guidance_scale,
                                self.shot_start_guidance_scale_2))
        pick = lambda mine, model_default: None if alone else mine if mine is not None else model_default  # noqa: E731
        return SamplerSettings(
            steps=self.steps or v.steps, sampler=self.sampler or v.sampler,
            shift=self.shift if self.shift is not None else v.shift,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else v.guidance_scale,
            guidance_scale_2=pick(self.guidance_scale_2, v.guidance_scale_2),
            boundary_ratio=self.boundary_ratio if self.boundary_ratio is not None else v.boundary_ratio,
            shot_start_guidance_scale=pick(self.shot_start_guidance_scale, v.shot_start_guidance_scale),
            shot_start_guidance_scale_2=pick(self.shot_start_guidance_scale_2, v.shot_start_guidance_scale_2),
            context_latents=self.context_latents if self.context_latents is not None else v.context_latents,
            memory_guidance_scale=(self.memory_guidance_scale if self.memory_guidance_scale is not None
                                   else v.memory_guidance_scale),
            recent_latents=self.recent_latents if self.recent_latents is not None else v.recent_latents,
            return_latents=self.return_latents if self.return_latents is not None else v.return_latents,
            return_memory_guidance_scale=(self.return_memory_guidance_scale if self.return_memory_guidance_scale
                                          is not None else v.return_memory_guidance_scale),
            return_latents_from=self.return_latents_from or v.return_latents_from,
            return_latents_as_recent=(self.return_latents_as_recent if self.return_latents_as_recent is not None
                                      else v.return_latents_as_recent),
        )


@dataclass
class SegmentResult:
    segment: Segment
    latents: torch.Tensor  # (1, C, n, H', W')
    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]: this segment's frames of the film
    memory_tokens: int
    seconds: float
    sampling_seconds: float = 0.0  # φ + text + denoising
    decoding_seconds: float = 0.0


@dataclass
class RecallResult:
    frame_index: int
    recalled: torch.Tensor  # (3, H, W) in [-1, 1], from memory alone
    truth: torch.Tensor | None  # (3, H, W) the true frame, when known
    psnr: float | None
    ssim: float | None
    baseline_psnr: float | None  # the history's mean frame vs the truth: what recall must beat
    memory_tokens: int
    history_latent_values: int
    seconds: float

    @property
    def compression_ratio(self) -> float:
        """Latent values of the history per memory token (each token is one DiT-width vector)."""
        return self.history_latent_values / max(self.memory_tokens, 1)


class GenerationStopped(Exception):
    """Raised between segments when the caller asks to stop; finished segments stay on disk."""


@dataclass
class PFPPipeline:
    model: PFPModel
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        use_onednn_conv3d(self.model.codec.vae)  # CPU inference: ~4x faster VAE (see fast_conv)

    # geometry ----------------------------------------------------------------------------------
    @property
    def segment_seconds(self) -> float:
        """The longest segment (segments end early at a cut)."""
        v = self.model.video
        return self.model.codec.temporal_ratio * v.segment_latent_frames / v.fps

    @property
    def grid(self) -> TimeGrid:
        return TimeGrid.of(self.model)

    def schedule(self, storyboard: Storyboard, after_footage: bool = False) -> list[TimedSegment]:
        """Segments whose cuts land at the shots' times (to the codec's time step); see `timeline`. After a
        creator's footage the first segment has no lead frame (it continues the footage's last latent)."""
        return shot_aligned_schedule(storyboard, TimeGrid.of(self.model, after_footage))

    def latent_shape(self, num_latent_frames: int) -> tuple[int, int, int, int, int]:
        v, c = self.model.video, self.model.codec
        return (1, c.latent_channels, num_latent_frames, v.height // c.spatial_ratio, v.width // c.spatial_ratio)

    def _velocity(self, x, t, text, memory, positions):
        return self.model.velocity(x, t, text.to(self.device, self.dtype), memory, positions)

    def _text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.text_encoder.encode(prompts).to(self.device, self.dtype)

    # generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        storyboard: Storyboard | str,
        settings: GenerationSettings | None = None,
        project: Project | None = None,
        start_segment: int = 0,
        on_segment: Callable[[SegmentResult], None] | None = None,
        on_step: Callable[[int, int, int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        footage: torch.Tensor | None = None,
    ) -> list[SegmentResult]:
        """Generate segments start_segment.. of the storyboard; earlier ones are read from `project`.

        footage: latents (1, C, T_f, H', W') of the history before the first shot (footage.py); by default the
        project's footage. It seeds the history: φ sees it as it sees generated segments, the storyboard's
        segments sit at the time positions after it and the first is decoded continuing its last latent frames.

        on_step(segment_index, num_segments, step, steps); should_stop() is checked between segments
        and between steps (a stop mid-segment discards only that segment).
        """
        sb = parse_storyboard(storyboard) if isinstance(storyboard, str) else storyboard
        settings = settings or GenerationSettings()
        sampler = settings.sampler_settings(self.model)
        if footage is None and project is not None:
            footage = load_footage_latents(project)
        segments = self.schedule(sb, after_footage=footage is not None)
        if project is not None:
            project.write_storyboard(storyboard if isinstance(storyboard, str) else format_storyboard(sb))
            project.write_settings({**self.settings_record(sb, settings, after_footage=footage is not None),
                                    **footage_record(project)})
        if start_segment > 0 and (project is None or start_segment > project.finished_segments()):
            raise ValueError(f"cannot continue from segment {start_segment}: the project holds "
                             f"{0 if project is None else project.finished_segments()} finished segments")
        history = project.load_history(start_segment) if start_segment > 0 else None
        if start_segment > 0 and (history is None or history.shape[2] != segments[start_segment].first_latent):
            raise ValueError(f"cannot continue from segment {start_segment}: the project's finished segments hold "
                             f"{0 if history is None else history.shape[2]} latent frames, the storyboard's "
                             f"{segments[start_segment].first_latent}")
        offset = 0  # latent time position of the storyboard's latent 0: after the footage
        if footage is not None:  # the footage's latents, never re-encoded from pixels, start the history
            offset = footage.shape[2]
            history = footage if history is None else torch.cat([footage, history], dim=2)
        if history is not None:
            history = history.to(self.device)
        decoder = StreamingDecoder(self.model.codec)  # each segment decoded once, continuing the previous one
        decoder.warm_up(history)
        cache: MemoryCache | None = None
        null_text = self.model.null_text(1).to(self.device, self.dtype)  # zeros: for the segments that are guided
        results = []
        for seg in segments[start_segment:]:
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped before segment {seg.index}")
            t0 = time.perf_counter()
            n = seg.num_latents
            memory = None
            if history is not None:
                memory, cache = self.model.memory_encoder.encode_incremental(history.to(self.dtype), cache)
            text = self._text([seg.prompt])
            shot_start = seg.index == 0 or segments[seg.index - 1].shot_index != seg.shot_index
            earlier = [other for other in segments[: seg.index] if other.prompt == seg.prompt] if shot_start else []
            seg_sampler = sampler.for_segment(shot_start, returning=bool(earlier))
            first = offset + seg.first_latent
            positions = torch.arange(first, first + n, dtype=torch.float32, device=self.device)

            def step_cb(i, steps, k=seg.index):
                if should_stop is not None and should_stop():
                    raise GenerationStopped(f"stopped during segment {k}")
                if on_step is not None:
                    on_step(k, len(segments), i, steps)

            gen = torch.Generator().manual_seed(segment_seed(settings.seed, seg.index))
            k = min(seg_sampler.context_latents, 0 if history is None else history.shape[2])
            context = history[:, :, history.shape[2] - k:].to(self.dtype) if k else None  # (1, C, k, H', W')
            if seg_sampler.recent_latents and history is not None:  # the frames this segment continues, unblurred
                memory = join_memory(memory, history_recent_tokens(self.model.transformer, history,
                                                                   seg_sampler.recent_latents))
            if earlier and seg_sampler.return_latents:  # a return to an earlier shot: the frames it ended on
                ref = earlier[-1]                            # (or, "start", the frames it began with)
                if seg_sampler.return_latents_from == "start":
                    opening = next(o for o in segments if o.shot_index == ref.shot_index)
                    end = offset + opening.first_latent + seg_sampler.return_latents
                else:
                    end = offset + ref.first_latent + ref.num_latents
                at = first if seg_sampler.return_latents_as_recent else None
                memory = join_memory(memory, history_recent_tokens(self.model.transformer, history,
                                                                   seg_sampler.return_latents, end, at))
            latents = sample(self._velocity, self.latent_shape(n), text, memory, positions, seg_sampler, gen,
                             null_text=null_text, on_step=step_cb, device=self.device, dtype=self.dtype,
                             context=context)
            t1 = time.perf_counter()
            frames = self._film_frames(seg, decoder.decode(latents)[0], footage is not None)  # (3, seg.num_frames, H, W)
            history = latents if history is None else torch.cat([history, latents], dim=2)
            t2 = time.perf_counter()
            result = SegmentResult(seg, latents, frames.cpu(), 0 if memory is None else memory.num_tokens,
                                   t2 - t0, t1 - t0, t2 - t1)
            if project is not None:  # the video first: saved latents mark a segment as finished
                write_mp4(project.segment_video_path(seg.index), frames.cpu(), self.model.video.fps, crf=12)
                project.save_segment_latents(seg.index, latents[0], {"prompt": seg.prompt, "seed": settings.seed})
            results.append(result)
            if on_segment is not None:
                on_segment(result)
        return results

    def _film_frames(self, seg: TimedSegment, frames: torch.Tensor, after_footage: bool = False) -> torch.Tensor:
        """The film's frames of a segment from its decoded pixel frames (3, T, H, W): the lead frame of the
        first latent left out (none after footage: it continues the footage), the last segment trimmed to the
        storyboard's length."""
        skip = TimeGrid.of(self.model, after_footage).lead_frames if seg.first_latent == 0 else 0
        return frames[:, skip : skip + seg.num_frames]

    def settings_record(self, sb: Storyboard, settings: GenerationSettings, after_footage: bool = False) -> dict:
        v, grid = self.model.video, TimeGrid.of(self.model, after_footage)
        return {"timeline": TIMELINE, "film_frames": grid.film_frames(sb.duration),
                "lead_frames": grid.lead_frames,
            "model": self.model.name, "trained": self.model.trained, **asdict(settings),
            "sampler_settings": asdict(settings.sampler_settings(self.model)),
            "video": asdict(v), "memory_rate": self.model.memory_encoder.config.rate,
            "memory_variant": self.model.memory_encoder.config.variant,
            "segment_seconds": self.segment_seconds, "num_segments": len(self.schedule(sb, after_footage)),
        }

    def first_segment_of_shot(self, storyboard: Storyboard, shot_index: int, after_footage: bool = False) -> int:
        for seg in self.schedule(storyboard, after_footage):
            if seg.shot_index >= shot_index:
                return seg.index
        raise ValueError(f"shot {shot_index} starts after the last segment")

    def regenerate_shot(self, project: Project, storyboard: Storyboard | str, shot_index: int,
                        settings: GenerationSettings | None = None, **callbacks) -> list[SegmentResult]:
        """Regenerate shot `shot_index` (new prompt in `storyboard`, or new seed) and everything after it;
        the segments before it are kept as they are and form the history."""
        sb = parse_storyboard(storyboard) if isinstance(storyboard, str) else storyboard
        start = self.first_segment_of_shot(sb, shot_index, after_footage=load_footage_latents(project) is not None)
        available = project.finished_segments()
        start = min(start, available)
        project.drop_segments_from(start)
        return self.generate(storyboard, settings, project, start_segment=start, **callbacks)

    @torch.no_grad()
    def decode_history(self, history: torch.Tensor) -> torch.Tensor:
        """All pixel frames (3, T, H, W) of a latent history (1, C, T', H', W'), decoded in one causal pass:
        the frames previewed during generation (the film adds the lead frame and a trimmed tail). Costs the
        whole history: the inspector reads the segments' MP4s instead."""
        return StreamingDecoder(self.model.codec).decode(history.to(self.device))[0]

    def export(self, project: Project, out_path=None, crf: int = 18, segments: range | None = None,
               fps: int | None = None, with_footage: bool = True) -> Path:
        """Write the film (or a range of segments, e.g. one shot) as H.264 MP4, storyboard in its comment.

        fps: another frame rate for the file; frames are resampled (nearest), so the duration is kept.
        with_footage: the whole film starts with the project's footage, if any (else: the generated part only)."""
        segments = segments if segments is not None else range(project.finished_segments())
        if len(segments) == 0:
            raise ValueError("nothing to export: the project has no finished segment")
        lead = footage_video_path(project) if with_footage and segments.start == 0 and has_footage(project) else None
        src_fps, fps = self.model.video.fps, fps or self.model.video.fps
        paths = [project.segment_video_path(i) for i in segments]
        frames = stream_segment_frames(([lead] if lead else []) + paths, src_fps, fps)  # the footage first
        settings = project.read_settings()
        sampler = settings.get("sampler_settings") or {}
        n_lead = int(footage_meta(project)["frames"]) if lead else None
        comment = (f"PFP Studio | model={settings.get('model')} seed={settings.get('seed')} steps={sampler.get('steps')}"
                   f"{guidance_comment(sampler)}{footage_comment(project, n_lead)}\n{project.read_storyboard()}")
        return write_mp4(out_path or project.film_path, frames, fps, crf=crf, comment=comment)

    # memory inspection ---------------------------------------------------------------------------
    @staticmethod
    def latent_index_of_frame(frame_index: int, temporal_ratio: int) -> tuple[int, int]:
        """Pixel frame -> (latent frame, offset among the pixel frames that latent decodes to)."""
        if frame_index == 0:
            return 0, 0
        return 1 + (frame_index - 1) // temporal_ratio, (frame_index - 1) % temporal_ratio

    @torch.no_grad()
    def recall(
        self,
        history: torch.Tensor,
        frame_index: int,
        truth_frames: torch.Tensor | None = None,
        truth_index: int | None = None,
        prompt: str = "",
        steps: int | None = None,
        seed: int = 0,
        window: int = 2,
    ) -> RecallResult:
        """Reconstruct pixel frame `frame_index` of a latent history (1, C, T', H', W') from φ(history) alone.

        The latent frames around it (a window ending at its latent) are denoised from pure noise given
        only the memory tokens, at their true time positions, then decoded. truth_frames (3, T, H, W):
        the true video, for PSNR/SSIM and the history-mean baseline; truth_index: the frame's index in it
        (default frame_index; a film leaves out the history's lead frame).
        """
        t0 = time.perf_counter()
        if frame_index < 0:
            raise ValueError(f"frame {frame_index} is outside the history (frames start at 0)")
        r = self.model.codec.temporal_ratio
        j, offset = self.latent_index_of_frame(frame_index, r)
        if not 0 <= j < history.shape[2]:
            raise ValueError(f"frame {frame_index} is outside the history ({self.model.codec.pixel_frames(history.shape[2])} frames)")
        history = history.to(self.device, self.dtype)
        memory = self.model.memory_encoder(history)
        first = max(0, j - window + 1)
        positions = torch.arange(first, j + 1, dtype=torch.float32, device=self.device)
        sampler = GenerationSettings(seed=seed, steps=steps).sampler_settings(self.model)
        # recall: no text (guidance 1); the model's memory guidance stays (G's answer with the memory pushed away
        # from its answer without it: +0.8-1.1 dB on a held-out real clip; the model card's recall tables are
        # unguided, `evaluate --memory-guidance` measures both)
        sampler = replace(sampler, guidance_scale=1.0, guidance_scale_2=None)
        shape = self.latent_shape(len(positions))
        latents = sample(self._velocity, shape, self._text([prompt]), memory, positions, sampler,
                         torch.Generator().manual_seed(seed), device=self.device, dtype=self.dtype)
        frames = self.model.codec.decode(latents)[0]  # (3, 1 + r (w - 1), H, W)
        recalled = frames[:, 0] if j == 0 else frames[:, -r + offset]
        truth = psnr_v = ssim_v = base = None
        if truth_frames is not None:
            truth = truth_frames[:, frame_index if truth_index is None else truth_index].to(recalled)
            psnr_v, ssim_v = psnr(recalled, truth), ssim(recalled, truth)
            base = psnr(history_mean_frame(truth_frames).to(recalled), truth)
        return RecallResult(frame_index, recalled.cpu(), None if truth is None else truth.cpu(), psnr_v, ssim_v, base,
                            memory.num_tokens, history[0].numel(), time.perf_counter() - t0)


def stream_segment_frames(paths: list, src_fps: float, fps: float):
    """uint8 (H, W, 3) frames of the segment files in order, one segment in memory at a time (a 10-minute
    film held whole as float32 took ~1 GB at 128x128); resampled to `fps` by nearest frame, duration kept."""
    from ..io.video import frame_count, read_video

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


def seconds_to_frame(seconds: float, fps: float) -> int:
    return int(math.floor(seconds * fps + 1e-6))
