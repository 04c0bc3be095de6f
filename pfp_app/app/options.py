"""One validation layer for every option the CLI and the studio take (seed, steps, crf, fps, ...).

Both front ends call :func:`check_options` before any model work starts, so `--crf 99` fails at once
instead of after every segment is generated. Messages name the option, the allowed range and the value
given, cut short (`io/text.py`) so an error line never echoes megabytes of a user's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..io.text import quote


class OptionError(ValueError):
    """A bad option value; the message names the option and its allowed range."""


@dataclass(frozen=True)
class RangeOption:
    """An option with an inclusive range; `none_ok`: None means "the model's default"."""

    cli: str  # how the CLI spells it, e.g. '--steps'
    ui: str  # how the studio labels it, e.g. 'Steps'
    low: float
    high: float
    none_ok: bool = False
    kind = "number"  # what the message says a value must be

    def check(self, value, front: str = "cli"):
        """The value converted (None when allowed), or OptionError naming the option as `front` shows it."""
        name = self.cli if front == "cli" else self.ui
        if value is None and self.none_ok:
            return None
        low, high = (f"{v}" if isinstance(v, int) else f"{v:g}" for v in (self.low, self.high))
        what = f"{name} must be a {self.kind} from {low} to {high}"
        if isinstance(value, bool):
            raise OptionError(f"{what}, got {quote(value)}")
        x = self.convert(value)
        if x is None or not self.low <= x <= self.high:
            raise OptionError(f"{what}, got {quote(value)}")
        return x

    @staticmethod
    def convert(value):
        """The value as this option's type, or None when it is not one (each subclass says how)."""
        raise NotImplementedError


class IntOption(RangeOption):
    """A whole number in the range."""

    kind = "whole number"

    @staticmethod
    def convert(value) -> int | None:
        if isinstance(value, float):
            return int(value) if math.isfinite(value) and value.is_integer() else None
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return None
        return value if isinstance(value, int) else None


class FloatOption(RangeOption):
    """A finite number in the range."""

    @staticmethod
    def convert(value) -> float | None:
        try:
            x = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            return None
        return x if math.isfinite(x) else None


MAX_SEED = 2**31 - 1
MAX_STEPS = 1000

SEED = IntOption("--seed", "Seed", 0, MAX_SEED)
STEPS = IntOption("--steps", "Steps", 1, MAX_STEPS, none_ok=True)
CRF = IntOption("--crf", "CRF", 0, 51)
FPS = IntOption("--fps", "FPS", 1, 120, none_ok=True)
GUIDANCE = FloatOption("--guidance", "Guidance", 1.0, 20.0, none_ok=True)  # classifier-free guidance; 1 = none
OPTIONS = {o.cli.lstrip("-"): o for o in (SEED, STEPS, CRF, FPS, GUIDANCE)}


def check_options(front: str = "cli", **values) -> dict:
    """Validated values of the named options (keys of OPTIONS: seed, steps, crf, fps, guidance); raises OptionError
    for the first bad one. front: 'cli' names options as flags ('--crf'), 'ui' as the studio labels them."""
    out = {}
    for key, value in values.items():
        out[key] = OPTIONS[key].check(value, front)
    return out


def check_seconds(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    """A finite number of seconds in [low, high] ((low, high] when low_open); OptionError naming `name`."""
    bound = f"({low:g}" if low_open else f"[{low:g}"
    what = f"{name} must be a number of seconds in {bound}, {high:g}]"
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{what}, got {quote(value)}") from None
    if not math.isfinite(x) or x < low or x > high or (low_open and x == low):
        raise OptionError(f"{what}, got {quote(value)}")
    return x


def check_choice(name: str, value, choices: list[str]) -> str:
    """`value` if it is one of `choices`, else OptionError listing them."""
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}; got {quote(value)}")
    return value


def check_runtime_options(profile: str, device: str) -> None:
    """--profile and --device, before the model is loaded (an unknown profile used to fail after loading)."""
    from ..runtime.profiles import profile_names

    check_choice("--profile", profile, profile_names())
    check_choice("--device", device, ["auto", "cpu", "cuda"])
