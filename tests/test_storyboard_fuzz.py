"""Issue 15 #1: no storyboard of at most 1 MB takes more than 0.2 s to parse or to be rejected.

The generous bound catches super-linear backtracking (a 40 KB `total:` value took 5 s before the fix),
not speed; hypothesis builds lines from the pieces that make regexes backtrack: numbers, long runs of
spaces or tabs, unit letters and a stray last character, at up to 1 MB.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfp_app.film.storyboard import MAX_STORYBOARD_CHARS, StoryboardError, parse_storyboard

BOUND_S = 0.2
ONE_MB = 1_000_000


def timed_parse(text: str) -> float:
    t0 = time.perf_counter()
    try:
        parse_storyboard(text)
    except StoryboardError:
        pass
    return time.perf_counter() - t0


@pytest.mark.parametrize("text", [
    "0s: a\ntotal: 1" + " " * 40000 + "x",  # the reproduction (5 s before the fix)
    "0s: a\nend: 1" + "\t" * 80000 + "x",
    "0s: a\ntotal: 1m" + " " * 80000 + "5" + " " * 80000 + "x",
    "1" + " " * 200000 + "x: a prompt",
    "0s: a\ntotal: " + "1" * 200000 + "x",
    "0s: " + "a" * (ONE_MB - 4),
])
def test_backtracking_inputs_are_fast(text: str) -> None:
    assert timed_parse(text) <= BOUND_S


def test_over_the_size_limit_is_rejected_with_a_clear_message() -> None:
    text = "0s: a\n" + "#" * MAX_STORYBOARD_CHARS
    with pytest.raises(StoryboardError, match="too long: 1,000,006 characters"):
        parse_storyboard(text)


def test_error_messages_echo_at_most_80_characters_of_the_input() -> None:
    with pytest.raises(StoryboardError) as err:
        parse_storyboard("0s: a\ntotal: 1" + " " * 40000 + "x")
    assert len(str(err.value)) < 200 and "…" in str(err.value)


_KEY = st.sampled_from(["", "total:", "end:", "TOTAL :", "0s:", "1:", "0:01:", "1m", "#"])
_NUM = st.sampled_from(["1", "12.5", ".5", "1:05", "0:01:05", "1m05", "1m", "99999999999999999999", "-3", ""])
_RUN = st.sampled_from([" ", "\t", "s", "m", ":", "0", ".", "\u00a0", "\r"])
_TAIL = st.sampled_from(["x", "s", ":", " a", ": p", "\n", "", "é"])


@st.composite
def adversarial_line(draw) -> str:
    run = draw(_RUN) * draw(st.integers(0, 120_000))
    parts = [draw(_KEY), draw(_NUM), run, draw(_NUM), draw(_RUN) * draw(st.integers(0, 1000)), draw(_TAIL)]
    return "".join(parts)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(adversarial_line(), min_size=1, max_size=8))
def test_fuzz_any_storyboard_up_to_1mb_is_parsed_or_rejected_in_time(lines: list[str]) -> None:
    text = "\n".join(lines)[:ONE_MB]
    assert timed_parse(text) <= BOUND_S
