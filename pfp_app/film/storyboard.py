"""Storyboards: timestamped shots that say what the video shows when.

Text format, one shot per line::

    # comments and blank lines are ignored
    0s: a fox wakes up in a snowy forest
    12.5s: the fox runs across a frozen lake
    1:05: close-up of the fox, breath steaming
    end: 1m30s

TIME forms (case-insensitive): ``12s``, ``12.5s``, ``12`` (bare seconds),
``1:05`` (m:ss), ``0:01:05`` (h:mm:ss), ``1m05s``, ``1m5``, ``1m``.
The prompt follows the first ':' after the time, so ``1:05: a: b`` is 65 s
with prompt ``a: b``. A colon time must be followed by the separator:
``1:05 prompt`` is an error rather than a silent "1 s / 05 prompt".

An optional ``end: TIME`` or ``total: TIME`` line (anywhere) sets the total
length; the ``total_seconds`` argument of :func:`parse_storyboard` overrides
it. Without either, the video lasts until the last shot's start + 5 s
(capped at ``MAX_SECONDS``).

Each shot lasts until the next one starts; the last one until the end.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from decimal import Decimal

from ..io.text import quote

MAX_SECONDS = 600.0
DEFAULT_LAST_SHOT_SECONDS = 5.0
MAX_SEGMENTS = 1_000_000
MAX_STORYBOARD_CHARS = 1_000_000  # ~10,000 shots of 100 characters; bounds parsing time and MP4 metadata

_NUM = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_INT = r"[0-9]+"
# Alternatives are tried longest-form first, so "1:05:" is m:ss, not "1" + ":".
_TIME = (
    rf"(?P<h>{_INT}):(?P<hm>[0-9]{{1,2}}):(?P<hs>(?:[0-9]{{1,2}})(?:\.[0-9]*)?)"
    rf"|(?P<m>{_INT}):(?P<ms>(?:[0-9]{{1,2}})(?:\.[0-9]*)?)"
    rf"|(?P<um>{_INT})\s*m(?:\s*(?P<us>{_NUM})\s*s?)?"
    rf"|(?P<s>{_NUM})\s*s?"
)
_FLAGS = re.ASCII | re.IGNORECASE
# No leading/trailing \s* here: parse_time strips first. "\s*s?\s*" (two adjacent runs) made a
# failed fullmatch of "1" + n spaces + "x" backtrack O(n^2) (issue 15: 40 KB took 5 s).
_TIME_FULL_RE = re.compile(rf"(?:{_TIME})", _FLAGS)
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what \s matches under re.ASCII
_SHOT_RE = re.compile(rf"(?:{_TIME})(?P<sep>\s*:)?", _FLAGS)
_TOTAL_RE = re.compile(r"(?:end|total)\s*:(?P<value>.*)", _FLAGS | re.DOTALL)
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")


class StoryboardError(ValueError):
    """A storyboard problem; the message names the line, e.g. 'line 3: ...'."""

    def __init__(self, message: str, line_no: int | None = None) -> None:
        self.line_no = line_no
        super().__init__(f"line {line_no}: {message}" if line_no is not None else message)


def _floats(obj, *names: str) -> None:
    """Store the named fields of a frozen dataclass as floats (times may be given as ints)."""
    for name in names:
        object.__setattr__(obj, name, float(getattr(obj, name)))


@dataclass(frozen=True)
class Shot:
    """One shot: ``prompt`` is active for ``start <= t < end`` (seconds)."""

    start: float
    end: float
    prompt: str

    def __post_init__(self) -> None:
        _floats(self, "start", "end")


@dataclass(frozen=True)
class Storyboard:
    """Contiguous shots covering ``[0, duration]`` seconds."""

    shots: tuple[Shot, ...]
    duration: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(self.shots))
        object.__setattr__(self, "duration", float(self.duration))
        if not self.shots:
            raise StoryboardError("a storyboard needs at least one shot")
        if self.shots[0].start != 0.0:
            raise StoryboardError("the first shot must start at 0s")
        for a, b in zip(self.shots, self.shots[1:]):
            if a.end != b.start:
                raise StoryboardError(f"shots must be contiguous ({_fmt(a.end)} != {_fmt(b.start)})")
        for s in self.shots:
            if not s.start < s.end:
                raise StoryboardError(f"shot at {_fmt(s.start)} must end after it starts")
        if self.shots[-1].end != self.duration:
            raise StoryboardError("the last shot must end at the storyboard's duration")

    def shot_index_at(self, t: float) -> int:
        """Index of the shot covering ``t``; the last shot also covers ``t >= duration``
        (a generated video may run slightly past ``duration``)."""
        if not t >= 0.0:  # also rejects NaN
            raise ValueError(f"time must be >= 0, got {t}")
        starts = [s.start for s in self.shots]
        return bisect.bisect_right(starts, t) - 1

    def prompt_at(self, t: float) -> str:
        """Prompt of the shot covering ``t`` (see :meth:`shot_index_at`)."""
        return self.shots[self.shot_index_at(t)].prompt


def prompt_key(prompt: str) -> str:
    """What makes two prompts the same shot: their words, whatever the case or a closing full stop."""
    return " ".join(prompt.casefold().strip().rstrip(".!").split())


def shot_returns(prompts: list[str]) -> list[int | None]:
    """For each shot (by its prompt), the shot it returns to: the first earlier shot with the same prompt
    (`prompt_key`), where the place and characters appeared first; None for a shot whose prompt is new. A creator
    brings a place or a character back as it was by repeating its shot's prompt."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for k, prompt in enumerate(prompts):
        key = prompt_key(prompt)
        out.append(first.get(key))
        first.setdefault(key, k)
    return out


@dataclass(frozen=True)
class Segment:
    """One generation segment ``[start, end)`` and the prompt active when it begins."""

    index: int
    start: float
    end: float
    prompt: str

    def __post_init__(self) -> None:
        _floats(self, "start", "end")
    shot_index: int


def parse_time(text: str, line_no: int | None = None) -> float:
    """Parse one TIME token (see module docstring) into seconds."""
    m = _TIME_FULL_RE.fullmatch(text.strip(_ASCII_SPACE))
    if m is None:
        raise StoryboardError(f"cannot parse time {quote(text.strip())} (try '12s', '1:05' or '1m05s')", line_no)
    return _match_seconds(m, line_no)


def _match_seconds(m: re.Match[str], line_no: int | None) -> float:
    """Seconds from a match of ``_TIME``; checks that minute/second fields are < 60."""
    g = m.groupdict()
    if g["h"] is not None:
        mins, secs = int(g["hm"]), float(g["hs"])
        if mins >= 60:
            raise StoryboardError(f"minutes must be below 60 in {quote(m.group(0).strip())}", line_no)
        value = float(g["h"]) * 3600 + mins * 60 + secs
    elif g["m"] is not None:
        secs = float(g["ms"])
        value = float(g["m"]) * 60 + secs
    elif g["um"] is not None:
        secs = float(g["us"]) if g["us"] is not None else 0.0
        value = float(g["um"]) * 60 + secs
    else:
        secs = 0.0
        value = float(g["s"])
    if secs >= 60:
        raise StoryboardError(f"seconds must be below 60 in {quote(m.group(0).strip())}", line_no)
    return float(value)


def _fmt(seconds: float) -> str:
    """Exact, positional seconds text: float(_fmt(x)[:-1]) == x for finite x >= 0."""
    seconds = float(seconds)
    if seconds.is_integer() and abs(seconds) < 1e16:
        return f"{int(seconds)}s"
    return f"{format(Decimal(repr(seconds)), 'f')}s"


def _check_limit(seconds: float, what: str, line_no: int | None) -> None:
    if seconds > MAX_SECONDS:
        raise StoryboardError(
            f"{what} {_fmt(seconds)} is over the {_fmt(MAX_SECONDS)} (10 minute) limit", line_no
        )


def parse_storyboard(text: str, total_seconds: float | None = None) -> Storyboard:
    """Parse storyboard text; raises only :class:`StoryboardError` on bad input."""
    if not isinstance(text, str):
        raise StoryboardError(f"storyboard must be text, got {type(text).__name__}")
    if len(text) > MAX_STORYBOARD_CHARS:
        raise StoryboardError(f"the storyboard is too long: {len(text):,} characters (limit {MAX_STORYBOARD_CHARS:,})")
    if "\x00" in text:  # it cannot go into the MP4's metadata, and is never meant
        nul_line = len(_LINE_BREAK_RE.split(text[: text.index("\x00")]))
        raise StoryboardError("contains a NUL character (\\x00); remove it", nul_line)
    starts: list[tuple[float, str, int]] = []  # (start, prompt, line_no)
    total: float | None = None
    total_line: int | None = None
    for line_no, raw in enumerate(_LINE_BREAK_RE.split(text.lstrip("\ufeff")), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tm = _TOTAL_RE.match(line)
        if tm is not None:
            if total_line is not None:
                raise StoryboardError(f"total length given twice (first on line {total_line})",
                                      line_no)
            total, total_line = parse_time(tm.group("value"), line_no), line_no
            _check_limit(total, "total length", line_no)
            continue
        starts.append(_parse_shot_line(line, line_no))
        t, _, _ = starts[-1]
        if len(starts) == 1 and t != 0.0:
            raise StoryboardError(f"the first shot must start at 0s (got {_fmt(t)})", line_no)
        if len(starts) > 1 and t <= starts[-2][0]:
            raise StoryboardError(f"times must increase ({_fmt(t)} after {_fmt(starts[-2][0])})", line_no)
    if not starts:
        raise StoryboardError("no shots found: write one shot per line as 'TIME: prompt', e.g. '0s: a red fox'")

    last_start, _, last_line = starts[-1]
    if total_seconds is not None:
        try:
            total, total_line = float(total_seconds), None
        except (TypeError, ValueError, OverflowError):
            raise StoryboardError(f"total_seconds must be a number, got {quote(total_seconds)}") from None
        if not math.isfinite(total) or total <= 0:
            raise StoryboardError(f"total length must be a positive number of seconds, got {quote(total_seconds)}")
        _check_limit(total, "total length", None)
    elif total is None:
        total = min(last_start + DEFAULT_LAST_SHOT_SECONDS, MAX_SECONDS)
        if total <= last_start:
            raise StoryboardError(
                f"the last shot starts at {_fmt(last_start)}, leaving no time before the "
                f"{_fmt(MAX_SECONDS)} limit",
                last_line,
            )
    if total <= last_start:
        raise StoryboardError(
            f"total length {_fmt(total)} must be after the last shot's start "
            f"({_fmt(last_start)} on line {last_line})",
            total_line,
        )

    ends = [s for s, _, _ in starts[1:]] + [total]
    shots = tuple(Shot(s, e, p) for (s, p, _), e in zip(starts, ends))
    return Storyboard(shots=shots, duration=total)


def _parse_shot_line(line: str, line_no: int) -> tuple[float, str, int]:
    """Parse a stripped, non-comment ``TIME: prompt`` line."""
    # messages are built only on error: building them for every line made 12,000 shots take 0.5 s
    def head() -> str:
        return quote(line.split(":", 1)[0].strip())

    def no_colon() -> str:
        return f"missing ':' between time and prompt (expected 'TIME: prompt', got {quote(line)})"

    def bad_time() -> str:
        return f"cannot parse time {head()} (try '12s', '1:05' or '1m05s')"

    m = _SHOT_RE.match(line)
    if m is None:
        if line.startswith("-") and line[1:2].isdigit():
            raise StoryboardError(f"negative time in {head()}", line_no)
        raise StoryboardError(bad_time() if ":" in line else no_colon(), line_no)
    if m.group("sep") is None:
        if ":" not in line:
            raise StoryboardError(no_colon(), line_no)
        if m.group("h") is not None or m.group("m") is not None:
            raise StoryboardError(f"missing ':' after time {quote(m.group(0).strip())}", line_no)
        raise StoryboardError(bad_time(), line_no)
    seconds = _match_seconds(m, line_no)
    _check_limit(seconds, "time", line_no)
    prompt = line[m.end():].strip()
    if not prompt:
        raise StoryboardError(f"empty prompt for the shot at {_fmt(seconds)}", line_no)
    return seconds, prompt, line_no


def format_storyboard(sb: Storyboard) -> str:
    """Storyboard as text; ``parse_storyboard(format_storyboard(sb)) == sb`` exactly."""
    lines = []
    for shot in sb.shots:
        p = shot.prompt
        if not p or p != p.strip() or "\n" in p or "\r" in p:
            raise StoryboardError(f"prompt of the shot at {_fmt(shot.start)} must be one non-empty stripped line")
        lines.append(f"{_fmt(shot.start)}: {p}")
    lines.append(f"end: {_fmt(sb.duration)}")
    return "\n".join(lines) + "\n"


MAX_STORYBOARD_FILE_BYTES = 4 * MAX_STORYBOARD_CHARS  # UTF-8 takes at most 4 bytes a character


def read_storyboard_file(path) -> str:
    """The text of a storyboard file: UTF-8 (a BOM is allowed) or one clear error. Other encodings are
    refused rather than guessed (Latin-1 bytes used to become U+FFFD silently)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise StoryboardError(f"storyboard file {quote(str(p))} not found")
    if p.stat().st_size > MAX_STORYBOARD_FILE_BYTES:
        raise StoryboardError(f"storyboard file {quote(str(p))} is too large ({p.stat().st_size:,} bytes; "
                              f"limit {MAX_STORYBOARD_FILE_BYTES:,})")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise StoryboardError(f"storyboard file {quote(p.name)} is not UTF-8 text (byte 0x{data[err.start]:02x}); "
                              "save it as UTF-8 (Latin-1 and other encodings are not guessed)", line) from None
