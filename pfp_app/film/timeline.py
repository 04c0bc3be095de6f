"""Shot-aligned timeline: which latent frames each segment generates, so that every cut lands at its typed
time (to the codec's time step) and the film is exactly the storyboard's length.

The codec's time grid (read from the model, never hard-coded): a causal Wan VAE's first latent frame holds
`lead_frames` pixel frames (1) and every later latent frame `temporal_ratio` (4), so latent j >= 1 holds pixel
frames [lead + r (j - 1), lead + r j). The film leaves out the lead frame(s): film frame f is pixel frame
f + lead, latent j >= 1 shows film frames [r (j - 1), r j), and a cut can fall on any multiple of r film
frames (0.5 s for the default model: 4 frames at 8 fps). A shot's time is rounded to the nearest multiple;
where that differs from the typed time the editor shows both.

Segments never cross a cut (each has one prompt) and hold at most `segment_latent_frames` latent frames;
a shot's latent frames are shared out evenly among the fewest segments that can hold them. The last segment
is trimmed to exactly round(duration * fps) film frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .storyboard import MAX_SEGMENTS, Segment, Storyboard, StoryboardError

TIMELINE = "shot-aligned-v1"  # written to a project's settings.json; projects without it used fixed-length segments


@dataclass(frozen=True)
class TimeGrid:
    """The codec's time grid at the model's frame rate."""

    fps: float
    temporal_ratio: int  # pixel frames per latent frame after the first
    lead_frames: int  # pixel frames of the first latent frame; not shown in the film
    segment_latent_frames: int  # the longest segment

    @classmethod
    def of(cls, model, after_footage: bool = False) -> "TimeGrid":
        """The grid of a film that starts from nothing, or (after_footage) that continues a creator's footage:
        then its first latent frame continues the footage's and shows `temporal_ratio` frames, no lead frame."""
        c = model.codec
        return cls(float(model.video.fps), int(c.temporal_ratio), 0 if after_footage else int(c.pixel_frames(1)),
                   int(model.video.segment_latent_frames))

    @property
    def lead_latents(self) -> int:
        """Latent frames before the film's first frame: 1 (the lead frame's latent) or 0 after footage."""
        return 1 if self.lead_frames else 0

    @property
    def step_seconds(self) -> float:
        """The finest cut: one latent frame of film."""
        return self.temporal_ratio / self.fps

    def film_frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.fps))

    def cut_frame(self, seconds: float) -> int:
        """The film frame where a shot typed at `seconds` starts: the nearest whole codec step."""
        return self.temporal_ratio * round(seconds * self.fps / self.temporal_ratio)

    def latent_of_film_frame(self, frame: int) -> int:
        """The latent frame that decodes to film frame `frame`."""
        return self.lead_latents + frame // self.temporal_ratio


@dataclass(frozen=True)
class TimedSegment(Segment):
    """A segment with its place on the latent and film time lines."""

    first_latent: int
    num_latents: int
    first_frame: int  # film frame of its first shown frame
    num_frames: int  # film frames it shows (the first segment leaves out the lead frame; the last is trimmed)


def shot_cut_frames(sb: Storyboard, grid: TimeGrid) -> list[int]:
    """Film frame where each shot starts, on the codec's grid; shots too close for the grid raise a
    StoryboardError naming both."""
    total = grid.film_frames(sb.duration)
    cuts = []
    for k, shot in enumerate(sb.shots):
        cut = grid.cut_frame(shot.start)
        if k and cut <= cuts[-1]:
            prev = sb.shots[k - 1].start
            raise StoryboardError(f"the shots at {shot.start:g}s and {prev:g}s are closer than the codec's time "
                                  f"step ({grid.step_seconds:g}s): both would start at {cut / grid.fps:g}s")
        if k and cut >= total:
            raise StoryboardError(f"the shot at {shot.start:g}s would start at {cut / grid.fps:g}s, at or after the "
                                  f"end of the film ({total / grid.fps:g}s)")
        cuts.append(cut)
    return cuts


def real_shot_times(sb: Storyboard, grid: TimeGrid) -> list[tuple[float, float]]:
    """(start, end) in seconds of each shot in the film that will be generated."""
    cuts = shot_cut_frames(sb, grid) + [grid.film_frames(sb.duration)]
    return [(a / grid.fps, b / grid.fps) for a, b in zip(cuts, cuts[1:])]


def shot_aligned_schedule(sb: Storyboard, grid: TimeGrid) -> list[TimedSegment]:
    """The segments that generate `sb`: cuts on the codec grid, exactly round(duration * fps) film frames."""
    total = grid.film_frames(sb.duration)
    r, n_max = grid.temporal_ratio, grid.segment_latent_frames
    cuts = shot_cut_frames(sb, grid)
    # latent frames [first, end) of each shot; shot 0 also holds latent 0 (the lead frame)
    bounds = [0] + [grid.latent_of_film_frame(c) for c in cuts[1:]] + [grid.lead_latents + math.ceil(total / r)]
    out: list[TimedSegment] = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        parts = math.ceil((b - a) / n_max)
        if len(out) + parts > MAX_SEGMENTS:
            raise ValueError(f"too many segments (limit {MAX_SEGMENTS})")
        sizes = [(b - a) // parts + (i < (b - a) % parts) for i in range(parts)]
        for size in sizes:
            f0, f1 = max(0, r * (a - grid.lead_latents)), min(total, r * (a + size - grid.lead_latents))
            out.append(TimedSegment(index=len(out), start=f0 / grid.fps, end=f1 / grid.fps,
                                    prompt=sb.shots[k].prompt, shot_index=k, first_latent=a, num_latents=size,
                                    first_frame=f0, num_frames=f1 - f0))
            a += size
    return out
