"""Storyboard -> one continuous video, segment by segment, each seeing the whole history through φ.

Thin orchestration (diffusers-pipeline style) over the model bundle; it generates and returns, and writes
nothing (`film/session.py` keeps a project's segments on disk):
  for each segment: φ(history latents) -> sample the segment -> decode -> yield it -> append to the history.
φ is causal in time, so the memory is extended incrementally instead of re-encoding the history.
`recall` reconstructs any past frame from φ(history) alone: the memory inspector.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..film.storyboard import Storyboard, parse_storyboard, prompt_key
from ..film.timeline import TimedSegment, TimeGrid, shot_aligned_schedule
from ..evaluation.metrics import history_mean_frame, psnr, ssim
from ..model.bundle import PFPModel
from ..model.causal_decode import StreamingDecoder
from ..model.fast_conv import use_onednn_conv3d
from ..model.memory_dit import history_recent_tokens, join_memory, recent_tokens
from ..model.memory_encoder import MemoryCache
from .flow import sample
from .settings import SamplerSettings


def segment_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed per segment: regenerating segment k alone reproduces it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


@dataclass
class SegmentResult:
    segment: TimedSegment
    latents: torch.Tensor  # (1, C, n, H', W')
    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]: this segment's frames of the film
    memory_tokens: int
    seconds: float
    seed: int  # the run's seed this segment was made with (its own noise: segment_seed(seed, index))
    sampler: SamplerSettings  # the run's settings (the segment itself used sampler.for_segment(...))
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
    """Raised when the caller's should_stop() turns true, between segments or between steps (that segment is
    discarded); the segments yielded before stay the caller's."""


def earlier_segments_of_prompt(segments: list[TimedSegment], seg: TimedSegment) -> list[TimedSegment]:
    """At a shot start, the earlier segments whose prompt is the same as `seg`'s (a return); [] elsewhere."""
    shot_start = seg.index == 0 or segments[seg.index - 1].shot_index != seg.shot_index
    key = prompt_key(seg.prompt)
    return [other for other in segments[: seg.index] if prompt_key(other.prompt) == key] if shot_start else []


def shot_of(segments: list[TimedSegment], shot: int) -> list[TimedSegment]:
    return [s for s in segments if s.shot_index == shot]


def returned_to(segments: list[TimedSegment], seg: TimedSegment) -> list[TimedSegment]:
    """The segments of the shot that `seg`'s shot returns to (`storyboard.shot_returns`), or []."""
    earlier = earlier_segments_of_prompt(segments, shot_of(segments, seg.shot_index)[0])
    return shot_of(segments, earlier[0].shot_index) if earlier else []


def retake_source(segments: list[TimedSegment], seg: TimedSegment, grid: TimeGrid) -> int | None:
    """The first latent of what `seg` re-takes at a return: the latents of the shot its shot returns to, aligned by
    film frame (the same time into the shot); None when its shot is not a return or that shot is too short."""
    ref = returned_to(segments, seg)
    if not ref:
        return None
    own_start = shot_of(segments, seg.shot_index)[0].first_frame
    first = grid.latent_of_film_frame(ref[0].first_frame + seg.first_frame - own_start)
    return first if first + seg.num_latents <= ref[-1].first_latent + ref[-1].num_latents else None


def return_keyframes(segments: list[TimedSegment], seg: TimedSegment, k: int, grid: TimeGrid) -> tuple[int, int] | None:
    """(first latent, count) of the keyframes a return's first segment continues: the first k latent frames that
    show the shot it returns to (its first appearance, so that return after return starts from one view); None
    when `seg` is not a return's first segment or k is 0."""
    if k <= 0 or not earlier_segments_of_prompt(segments, seg):
        return None
    ref = returned_to(segments, seg)
    first = grid.latent_of_film_frame(ref[0].first_frame)  # latent 0 may be the lead frame's
    return first, min(k, ref[-1].first_latent + ref[-1].num_latents - first)


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

    def schedule(self, storyboard: Storyboard | str, after_footage: bool = False) -> list[TimedSegment]:
        """Segments whose cuts land at the shots' times (to the codec's time step); see `timeline`. After a
        creator's footage the first segment has no lead frame (it continues the footage's last latent)."""
        sb = parse_storyboard(storyboard) if isinstance(storyboard, str) else storyboard
        return shot_aligned_schedule(sb, TimeGrid.of(self.model, after_footage))

    def latent_shape(self, num_latent_frames: int) -> tuple[int, int, int, int, int]:
        v, c = self.model.video, self.model.codec
        return (1, c.latent_channels, num_latent_frames, v.height // c.spatial_ratio, v.width // c.spatial_ratio)

    def _velocity(self, x, t, text, memory, positions):
        return self.model.velocity(x, t, text.to(self.device, self.dtype), memory, positions)

    def _text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.text_encoder.encode(prompts).to(self.device, self.dtype)

    # generation ----------------------------------------------------------------------------------
    def generate(self, storyboard: Storyboard | str, seed: int = 0, sampler: SamplerSettings | None = None,
                 footage: torch.Tensor | None = None, **callbacks) -> list[SegmentResult]:
        """The whole storyboard in memory (tests, benchmarks): every segment with `seed` and `sampler` (default: the
        model's), after `footage` latents (1, C, T_f, H', W') if given."""
        segments = self.schedule(storyboard, after_footage=footage is not None)
        sampler = sampler or self.model.sampler
        return list(self.generate_segments(segments, lambda k: seed, lambda k: sampler, footage=footage, **callbacks))

    @torch.no_grad()
    def generate_segments(
        self,
        segments: list[TimedSegment],
        seed_of: Callable[[int], int],
        sampler_of: Callable[[int], SamplerSettings],
        start: int = 0,
        history: torch.Tensor | None = None,
        footage: torch.Tensor | None = None,
        on_step: Callable[[int, int, int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[SegmentResult]:
        """Generate segments[start:] in order, yielding each as soon as it is decoded.

        seed_of(k), sampler_of(k): the run seed and settings of segment k. history: latents (1, C, T, H', W') of
        segments[:start] (their first_latent.. in order); footage: latents (1, C, T_f, H', W') of the history
        before the first shot (`film/footage.py`): φ sees it as it sees generated segments, the storyboard's
        segments sit at the time positions after it, and the first is decoded continuing its last latent frames.
        on_step(segment_index, num_segments, step, steps); should_stop() is checked between segments and between
        steps (GenerationStopped; a segment stopped midway is discarded).
        """
        if start >= len(segments):
            return
        if start and (history is None or history.shape[2] != segments[start].first_latent):
            raise ValueError(f"cannot continue from segment {start}: the history holds "
                             f"{0 if history is None else history.shape[2]} latent frames, the storyboard's segments "
                             f"before it {segments[start].first_latent}")
        offset = 0  # latent time position of the storyboard's latent 0: after the footage
        if footage is not None:  # the footage's latents, never re-encoded from pixels, start the history
            offset = footage.shape[2]
            history = footage if history is None else torch.cat([footage, history], dim=2)
        if history is not None:
            history = history.to(self.device)
        grid = TimeGrid.of(self.model, after_footage=footage is not None)
        decoder = StreamingDecoder(self.model.codec)  # each segment decoded once, continuing the previous one
        decoder.warm_up(history)
        cache: MemoryCache | None = None
        null_text = self.model.null_text(1).to(self.device, self.dtype)  # zeros: for the segments that are guided
        for seg in segments[start:]:
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped before segment {seg.index}")
            t0 = time.perf_counter()
            n = seg.num_latents
            memory = None
            if history is not None:
                memory, cache = self.model.memory_encoder.encode_incremental(history.to(self.dtype), cache)
            text = self._text([seg.prompt])
            shot_start = seg.index == 0 or segments[seg.index - 1].shot_index != seg.shot_index
            earlier = earlier_segments_of_prompt(segments, seg)
            run_sampler, run_seed = sampler_of(seg.index), seed_of(seg.index)
            seg_sampler = run_sampler.for_segment(shot_start, returning=bool(earlier))
            first = offset + seg.first_latent
            positions = torch.arange(first, first + n, dtype=torch.float32, device=self.device)

            def step_cb(i, steps, k=seg.index):
                if should_stop is not None and should_stop():
                    raise GenerationStopped(f"stopped during segment {k}")
                if on_step is not None:
                    on_step(k, len(segments), i, steps)

            gen = torch.Generator().manual_seed(segment_seed(run_seed, seg.index))
            keys = return_keyframes(segments, seg, seg_sampler.return_keyframes, grid)
            if keys is not None:  # a return: continue its first appearance's opening frames (see SamplerSettings)
                a, k = offset + keys[0], keys[1]
                continues = history[:, :, a : a + k].to(self.dtype)  # (1, C, k, H', W')
            else:  # within a shot: the history's last frames
                k = min(seg_sampler.context_latents, 0 if history is None else history.shape[2])
                continues = history[:, :, history.shape[2] - k:].to(self.dtype) if k else None
            context = continues if k else None
            if seg_sampler.recent_latents and keys is not None:  # a return continued: its keyframes, unblurred
                recent = continues[:, :, -seg_sampler.recent_latents:]
                back = torch.arange(recent.shape[2], 0, -1, dtype=positions.dtype, device=self.device)
                memory = join_memory(memory, recent_tokens(self.model.transformer, recent, positions[:1] - back))
            elif seg_sampler.recent_latents and history is not None:  # the frames this segment continues, unblurred
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
            init = None
            if seg_sampler.return_retake and (src := retake_source(segments, seg, grid)) is not None:
                init = history[:, :, offset + src : offset + src + n]  # (1, C, n, H', W'): the first appearance
            latents = sample(self._velocity, self.latent_shape(n), text, memory, positions, seg_sampler, gen,
                             null_text=null_text, on_step=step_cb, device=self.device, dtype=self.dtype,
                             context=context, init=init, init_sigma=seg_sampler.return_retake)
            t1 = time.perf_counter()
            frames = self._film_frames(seg, decoder.decode(latents)[0], footage is not None)  # (3, seg.num_frames, H, W)
            history = latents if history is None else torch.cat([history, latents], dim=2)
            t2 = time.perf_counter()
            yield SegmentResult(seg, latents, frames.cpu(), 0 if memory is None else memory.num_tokens, t2 - t0,
                                run_seed, run_sampler, t1 - t0, t2 - t1)

    def _film_frames(self, seg: TimedSegment, frames: torch.Tensor, after_footage: bool = False) -> torch.Tensor:
        """The film's frames of a segment from its decoded pixel frames (3, T, H, W): the lead frame of the
        first latent left out (none after footage: it continues the footage), the last segment trimmed to the
        storyboard's length."""
        skip = TimeGrid.of(self.model, after_footage).lead_frames if seg.first_latent == 0 else 0
        return frames[:, skip : skip + seg.num_frames]

    @torch.no_grad()
    def decode_history(self, history: torch.Tensor) -> torch.Tensor:
        """All pixel frames (3, T, H, W) of a latent history (1, C, T', H', W'), decoded in one causal pass:
        the frames previewed during generation (the film adds the lead frame and a trimmed tail). Costs the
        whole history: the inspector reads the segments' MP4s instead."""
        return StreamingDecoder(self.model.codec).decode(history.to(self.device))[0]

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
        # recall: no text (guidance 1); the model's memory guidance stays (G's answer with the memory pushed away
        # from its answer without it: +0.8-1.1 dB on a held-out real clip; the model card's recall tables are
        # unguided, `evaluate --memory-guidance` measures both)
        sampler = self.model.sampler.for_recall(steps)
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


def seconds_to_frame(seconds: float, fps: float) -> int:
    return int(math.floor(seconds * fps + 1e-6))
