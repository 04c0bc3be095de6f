"""How a segment is sampled: one frozen type, one name per field.

A model's defaults are its `pfp_model.json` "sampler" entry (`PFPModel.sampler`); a run overrides them with
`dataclasses.replace`; a project records the settings of every segment and an export carries them
(`film/export.py`), so a restored film is sampled exactly as it was. The defaults written here are the neutral
ones (every extra off): what a field missing from an older record means.

Adding a setting: a field here (with its neutral default and a comment), its use in `sampling/pipeline.py` or
`sampling/flow.py`, and, if the model should use it by default, its value in the model's `pfp_model.json`.
Records, exports, restore and resume carry it with no further change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

NUM_TRAIN_TIMESTEPS = 1000
RETURN_SOURCES = ("end", "start")
SAMPLERS = ("unipc", "euler")  # flow.make_scheduler's


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 20
    sampler: str = "unipc"  # diffusers' flow-matching scheduler: 'unipc' (Wan's default) or 'euler'
    shift: float = 3.0  # timestep shift of the schedule
    guidance_scale: float = 1.0  # classifier-free guidance; 1: none (one forward per step)
    # Wan 2.2's two-scale guidance (diffusers' WanPipeline: guidance_scale_2 below boundary_ratio): the layout and
    # colours are settled at high noise, where guidance_scale applies; below the boundary guidance_scale_2 (None:
    # the same scale; 1: none, and one forward per step instead of two)
    guidance_scale_2: float | None = None
    boundary_ratio: float = 0.875
    # a shot's first segment, where the text alone must set the new place (within a shot the memory holds it):
    # these replace guidance_scale / guidance_scale_2 there (None: the same as elsewhere)
    shot_start_guidance_scale: float | None = None
    shot_start_guidance_scale_2: float | None = None
    # within a shot, the last `context_latents` latent frames of the history are denoised again beside the new
    # segment, pinned to their known values (`flow.sample`'s context): the join is drawn as one piece, not as two
    context_latents: int = 0
    # within a shot, memory guidance: v += memory_guidance_scale * (v(memory) - v(no memory)), pushing the segment
    # toward what the memory holds and away from what the text alone would draw; G knows "no memory" from training
    # (a clip's first segment). 0: off
    memory_guidance_scale: float = 0.0
    # within a shot, the last `recent_latents` latent frames of the history join φ's memory as clean tokens at full
    # resolution (memory_dit.recent_tokens): G must have been trained with them (train --recent-latents)
    recent_latents: int = 0
    # at a shot start whose prompt repeats an earlier shot's (a return), the last `return_latents` latent frames of
    # that earlier shot join φ's memory the same way, at their own times
    return_latents: int = 0
    # which frames of that earlier shot: "end" (the frames it ended on) or "start" (the frames it began with)
    return_latents_from: str = "end"
    # and where they sit: False, at their own times; True, just before the returning segment
    return_latents_as_recent: bool = False
    # at such a return's first segment, memory guidance of this scale (elsewhere a shot's first segment takes none)
    return_memory_guidance_scale: float = 0.0
    # at a return's first segment, the first `return_keyframes` latent frames of the shot it returns to (its first
    # appearance) are denoised again just before the segment, pinned to their values (`flow.sample`'s context, the
    # replacement method): the return is drawn as that view continued, so the place and the characters come back
    # as they were and do not drift from return to return. 0: off (the return is drawn from the prompt and memory)
    return_keyframes: int = 0
    # and that segment is sampled as a shot's continuation (the within-shot guidance, memory guidance and recent
    # frames, the keyframes as the frames it continues) instead of as a shot start
    return_as_continuation: bool = False
    # at a return, every segment of the returning shot is a re-take of the shot it returns to: it starts from that
    # first appearance's latents at the same time into the shot, noised to this level (`flow.sample`'s init), and
    # is denoised with its prompt and the memory; the steps above that noise level are skipped. The place's view
    # and the characters come back as they first appeared, and return after return takes the same first
    # appearance, so nothing drifts. 0: off (a return is drawn anew); 1: pure noise (the same)
    return_retake: float = 0.0

    def __post_init__(self):
        if self.return_latents_from not in RETURN_SOURCES:
            raise ValueError(f"return_latents_from must be 'end' or 'start', not {self.return_latents_from!r}")
        checks = [("steps", isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
                   "a whole number ≥ 1"),
                  ("sampler", self.sampler in SAMPLERS, " or ".join(SAMPLERS)),
                  ("shift", _number(self.shift) and self.shift > 0, "a number > 0"),
                  ("boundary_ratio", _number(self.boundary_ratio) and 0 <= self.boundary_ratio <= 1, "from 0 to 1"),
                  ("return_retake", _number(self.return_retake) and 0 <= self.return_retake <= 1, "from 0 to 1"),
                  ("return_as_continuation", isinstance(self.return_as_continuation, bool), "true or false"),
                  ("return_latents_as_recent", isinstance(self.return_latents_as_recent, bool), "true or false")]
        checks += [(name, isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool)
                    and getattr(self, name) >= 0, "a whole number ≥ 0")
                   for name in ("context_latents", "recent_latents", "return_latents", "return_keyframes")]
        checks += [(name, _number(getattr(self, name)) and getattr(self, name) >= 0, "a number ≥ 0")
                   for name in ("guidance_scale", "memory_guidance_scale", "return_memory_guidance_scale")]
        checks += [(name, getattr(self, name) is None or (_number(getattr(self, name)) and getattr(self, name) >= 0),
                    "a number ≥ 0 or none")
                   for name in ("guidance_scale_2", "shot_start_guidance_scale", "shot_start_guidance_scale_2")]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"sampler setting {name} must be {what}, not {getattr(self, name)!r}")

    # ---- what one segment uses --------------------------------------------------------------------------------
    def for_segment(self, shot_start: bool, returning: bool = False) -> "SamplerSettings":
        """The settings of one segment: a shot's first segment takes the shot-start scales, if any, no context
        and no memory guidance, except a return's (`returning`: its prompt repeats an earlier shot's), which takes
        return_memory_guidance_scale, or, with return keyframes as a continuation, the within-shot settings."""
        if not shot_start or (returning and self.return_keyframes and self.return_as_continuation):
            return self
        s = replace(self, context_latents=0, recent_latents=0,
                    memory_guidance_scale=self.return_memory_guidance_scale if returning else 0.0)
        if self.shot_start_guidance_scale is not None:
            s = replace(s, guidance_scale=self.shot_start_guidance_scale, guidance_scale_2=self.shot_start_guidance_scale_2)
        return s

    def guidance_at(self, timestep: float) -> float:
        """The guidance scale at a timestep (0..1000)."""
        if self.guidance_scale_2 is None or timestep >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS:
            return self.guidance_scale
        return self.guidance_scale_2

    # ---- overrides ----------------------------------------------------------------------------------------------
    def with_one_guidance(self, scale: float) -> "SamplerSettings":
        """One classifier-free guidance scale for every segment and step (the CLI's --guidance)."""
        return replace(self, guidance_scale=float(scale), guidance_scale_2=None, shot_start_guidance_scale=None,
                       shot_start_guidance_scale_2=None)

    def overridden(self, steps: int | None = None, guidance: float | None = None) -> "SamplerSettings":
        """These settings with the front ends' two overrides: steps, and one guidance scale (None: unchanged)."""
        s = self if steps is None else replace(self, steps=int(steps))
        return s if guidance is None else s.with_one_guidance(guidance)

    def for_recall(self, steps: int | None = None, memory_guidance_scale: float | None = None) -> "SamplerSettings":
        """Recalling frames from the memory alone: no text, so no classifier-free guidance; the model's memory
        guidance unless another scale is given (G's answer with the memory pushed away from its answer without it)."""
        return replace(self, steps=self.steps if steps is None else int(steps), guidance_scale=1.0,
                       guidance_scale_2=None, shot_start_guidance_scale=None, shot_start_guidance_scale_2=None,
                       memory_guidance_scale=(self.memory_guidance_scale if memory_guidance_scale is None
                                              else float(memory_guidance_scale)))

    def with_text_overrides(self, items: list[str]) -> "SamplerSettings":
        """These settings with `field=value` overrides as typed on a command line (benchmarks' --sampler):
        numbers, true/false, none, or text, each checked against the field's type."""
        types = {f.name: f.type for f in fields(self)}
        values = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in types:
                raise ValueError(f"--sampler takes FIELD=VALUE with FIELD one of {', '.join(types)}; got {item!r}")
            values[name] = _parse_value(name, text.strip(), str(types[name]))
        return replace(self, **values)

    # ---- records ------------------------------------------------------------------------------------------------
    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict, base: "SamplerSettings | None" = None) -> "SamplerSettings":
        """Settings from a record (settings.json, a segment's record, an export, pfp_model.json): the record's
        fields over `base` (default: the neutral defaults). Unknown fields are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"unknown sampler setting(s): {', '.join(unknown)}")
        return replace(base or cls(), **record)


def _parse_value(name: str, text: str, kind: str):
    if text.lower() == "none" and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"--sampler {name}: {text!r} is not a {kind.split(' ')[0]}") from None
    return text


SAMPLER_FIELDS = tuple(f.name for f in fields(SamplerSettings))
