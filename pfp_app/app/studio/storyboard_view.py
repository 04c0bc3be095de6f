"""Storyboard text -> what the editor shows: a shot table, one inline validation line, shot choices."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...film.storyboard import Shot, Storyboard, StoryboardError, parse_storyboard, shot_returns
from ...film.timeline import TimeGrid, real_shot_times, shot_aligned_schedule

PRESETS_DIR = Path(__file__).resolve().parents[3] / "presets" / "storyboards"
TABLE_HEADERS = ["#", "start s", "end s", "segs", "prompt", "returns to"]
TABLE_TYPES = ["number", "str", "str", "number", "str", "str"]
WHOLE_FILM = -1
_TOTAL_LINE = re.compile(r"(?:end|total)\s*:", re.IGNORECASE)


@dataclass
class StoryboardCheck:
    storyboard: Storyboard | None
    rows: list[list]  # the shot table
    message: str  # one Markdown line: what is wrong (naming the line) or what will be generated
    shot_choices: list[tuple[str, int]]  # (label, shot index) for the shot pickers

    @property
    def ok(self) -> bool:
        return self.storyboard is not None


def _time_cell(typed: float, real: float) -> str:
    """'3.5' when the film cuts where typed, else '3.3 → 3.5' (typed → real, seconds)."""
    return f"{typed:g}" if abs(typed - real) < 1e-9 else f"{typed:g} → {real:g}"


def check_storyboard(text: str, grid: TimeGrid) -> StoryboardCheck:
    """Parse the editor's text with the core parser and place its cuts on the codec's grid; never raises."""
    try:
        sb = parse_storyboard(text or "")
        segments = shot_aligned_schedule(sb, grid)
        real = real_shot_times(sb, grid)
    except StoryboardError as err:
        return StoryboardCheck(None, [], f"**✗ Storyboard error** — {err}", [])
    counts = Counter(s.shot_index for s in segments)  # not a scan per shot: 12,000 shots took 0.9 s
    per_shot = [counts[k] for k in range(len(sb.shots))]
    back = shot_returns([s.prompt for s in sb.shots])
    rows = [[k + 1, _time_cell(s.start, a), _time_cell(s.end, b), per_shot[k], s.prompt,
             "" if back[k] is None else f"shot {back[k] + 1}"] for k, (s, (a, b)) in enumerate(zip(sb.shots, real))]
    film_s = real[-1][1]
    notes = [f"**✓ Valid:** {len(sb.shots)} shot{'s' * (len(sb.shots) != 1)}, a {film_s:g}-s film → "
             f"{len(segments)} segment{'s' * (len(segments) != 1)} (each at most "
             f"{grid.temporal_ratio * grid.segment_latent_frames / grid.fps:g} s, cut at every shot)"]
    moved = [f"shot {k + 1} {s.start:g} s → {a:g} s" for k, (s, (a, _)) in enumerate(zip(sb.shots, real))
             if abs(s.start - a) > 1e-9]
    if abs(film_s - sb.duration) > 1e-9:
        moved.append(f"end {sb.duration:g} s → {film_s:g} s")
    if moved:
        notes.append(f"cuts fall on the codec's {grid.step_seconds:g}-s steps: {', '.join(moved)}")
    returns = [f"shot {k + 1} returns to shot {j + 1}" for k, j in enumerate(back) if j is not None]
    if returns:
        notes.append(", ".join(returns) + " (the same prompt: its place and characters come back from the memory)")
    return StoryboardCheck(sb, rows, " · ".join(notes), shot_choices(sb))


def shot_choices(sb: Storyboard) -> list[tuple[str, int]]:
    return [(shot_label(k, s), k) for k, s in enumerate(sb.shots)]


def shot_label(k: int, shot: Shot) -> str:
    prompt = shot.prompt if len(shot.prompt) <= 40 else shot.prompt[:39] + "…"
    return f"Shot {k + 1} · {shot.start:g}–{shot.end:g} s · {prompt}"


def return_choices(sb: Storyboard) -> list[tuple[str, int]]:
    """(label, shot index) of the shots that return to an earlier one, for the inspector's return picker."""
    back = shot_returns([s.prompt for s in sb.shots])
    return [(f"Shot {k + 1} returns to shot {j + 1}", k) for k, j in enumerate(back) if j is not None]


def replace_prompt_in_text(text: str, sb: Storyboard, shot_index: int, prompt: str) -> str:
    """The editor's text with one shot's prompt changed in place: comments, blank lines, the time as typed and
    the `total:` line stay as they are. sb is `parse_storyboard(text)`."""
    new = " ".join((prompt or "").split())
    if not new:
        raise StoryboardError(f"the new prompt of shot {shot_index + 1} is empty")
    lines = text.splitlines(keepends=True)
    shot = -1
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#") or _TOTAL_LINE.match(line):
            continue
        shot += 1
        if shot == shot_index:
            body = raw.rstrip()
            old = sb.shots[shot_index].prompt
            if not body.endswith(old):
                break
            lines[i] = body[: len(body) - len(old)] + new + raw[len(body):]
            out = "".join(lines)
            parse_storyboard(out)  # the prompt must keep the storyboard valid
            return out
    raise StoryboardError(f"shot {shot_index + 1} was not found in the text")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.txt"))


def read_preset(name: str) -> str:
    if name not in preset_names():
        raise ValueError(f"no storyboard preset named {name!r}")
    return (PRESETS_DIR / f"{name}.txt").read_text()
