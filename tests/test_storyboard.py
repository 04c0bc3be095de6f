"""Tests for pfp_app.film.storyboard: parsing, errors, round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfp_app.film.storyboard import (
    MAX_SECONDS,
    Shot,
    Storyboard,
    StoryboardError,
    format_storyboard,
    parse_storyboard,
)


def starts(sb: Storyboard) -> list[float]:
    return [s.start for s in sb.shots]


# ---------------------------------------------------------------- time forms


@pytest.mark.parametrize(
    "token, seconds",
    [
        ("12s", 12.0),
        ("12.5s", 12.5),
        ("12", 12.0),
        ("12.25", 12.25),
        ("12 s", 12.0),
        ("12S", 12.0),
        (".5s", 0.5),
        ("1:05", 65.0),
        ("1:5", 65.0),
        ("1:05.5", 65.5),
        ("9:59", 599.0),
        ("0:00:30", 30.0),
        ("0:01:05", 65.0),
        ("1m05s", 65.0),
        ("1m5s", 65.0),
        ("1m 5s", 65.0),
        ("1m5", 65.0),
        ("1m05.5s", 65.5),
        ("1M", 60.0),
        ("1m", 60.0),
    ],
)
def test_time_forms(token: str, seconds: float) -> None:
    sb = parse_storyboard(f"0s: opening\n{token}: the shot\n", total_seconds=600)
    assert sb.shots[1].start == seconds
    assert sb.shots[1].prompt == "the shot"
    assert sb.shots[0].end == seconds


def test_basic_parse_ends_and_duration() -> None:
    text = """
    # my film
    0s: a fox wakes up

    12.5s: the fox runs: fast
    1:05: close-up
    END: 1m30s
    """
    sb = parse_storyboard(text)
    assert sb == Storyboard(
        shots=(
            Shot(0.0, 12.5, "a fox wakes up"),
            Shot(12.5, 65.0, "the fox runs: fast"),
            Shot(65.0, 90.0, "close-up"),
        ),
        duration=90.0,
    )


def test_colon_time_then_prompt_with_colons() -> None:
    sb = parse_storyboard("0: a\n1:05: prompt\n")
    assert sb.shots[1] == Shot(65.0, 70.0, "prompt")
    sb = parse_storyboard("0s: a\n0:01:05: title: the end\n")
    assert sb.shots[1].start == 65.0 and sb.shots[1].prompt == "title: the end"
    # a bare-seconds time may be followed by a prompt that itself looks like a time
    sb = parse_storyboard("0: 12:30 pm meeting\n")
    assert sb.shots[0].prompt == "12:30 pm meeting"


def test_default_duration_is_last_start_plus_5s() -> None:
    assert parse_storyboard("0s: a\n10s: b").duration == 15.0
    # capped at the 10-minute limit
    assert parse_storyboard("0s: a\n598s: b").duration == MAX_SECONDS


def test_total_line_anywhere_and_argument_overrides() -> None:
    text = "total: 40s\n0s: a\n10s: b\n"
    assert parse_storyboard(text).duration == 40.0
    assert parse_storyboard("0s: a\n10s: b\nTotal: 0:40\n").duration == 40.0
    sb = parse_storyboard(text, total_seconds=25)
    assert sb.duration == 25.0 and sb.shots[-1].end == 25.0


def test_crlf_and_bom() -> None:
    sb = parse_storyboard("\ufeff0s: a\r\n5s: b\r\n")
    assert [s.prompt for s in sb.shots] == ["a", "b"]


def test_prompt_at_and_shot_index_at() -> None:
    sb = parse_storyboard("0s: a\n10s: b\n20s: c\nend: 30s")
    assert sb.prompt_at(0.0) == "a"
    assert sb.prompt_at(9.999) == "a"
    assert sb.prompt_at(10.0) == "b"  # [start, end): the boundary belongs to the next shot
    assert sb.shot_index_at(25.0) == 2
    assert sb.prompt_at(30.0) == "c"  # last shot covers t == duration
    assert sb.prompt_at(31.0) == "c"  # and the overrun of the last segment
    with pytest.raises(ValueError):
        sb.prompt_at(-0.1)
    with pytest.raises(ValueError):
        sb.prompt_at(math.nan)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, line_no, fragment",
    [
        ("", None, "no shots found"),
        ("# only a comment\n\nend: 10s\n", None, "no shots found"),
        ("0s: a\nabc: b\n", 2, "cannot parse time 'abc'"),
        ("0s: a\n5x: b\n", 2, "cannot parse time '5x'"),
        ("0s: a\n12s the fox\n", 2, "missing ':' between time and prompt"),
        ("0s: a\njust words\n", 2, "missing ':' between time and prompt"),
        ("0s: a\n1:05 prompt: x\n", 2, "missing ':' after time '1:05'"),
        ("0s: a\n5s:   \n", 2, "empty prompt"),
        ("-5s: a\n", 1, "negative time"),
        ("0s: a\n\n20s: b\n12s: c\n", 4, "times must increase (12s after 20s)"),
        ("0s: a\n20s: b\n20s: c\n", 3, "times must increase (20s after 20s)"),
        ("5s: a\n", 1, "the first shot must start at 0s"),
        ("0s: a\n601s: b\n", 2, "over the 600s (10 minute) limit"),
        ("0s: a\n0:10:01: b\n", 2, "over the 600s (10 minute) limit"),
        ("0s: a\nend: 11m\n", 2, "over the 600s (10 minute) limit"),
        ("0s: a\n20s: b\nend: 20s\n", 3, "must be after the last shot's start (20s on line 2)"),
        ("end: 10s\n0s: a\n20s: b\n", 1, "must be after the last shot's start"),
        ("0s: a\nend: 10s\ntotal: 20s\n", 3, "total length given twice (first on line 2)"),
        ("0s: a\nend: soon\n", 2, "cannot parse time 'soon'"),
        ("0s: a\n1:75: b\n", 2, "seconds must be below 60"),
        ("0s: a\n0:75:00: b\n", 2, "minutes must be below 60"),
        ("0s: a\n600s: b\n", 2, "leaving no time"),
    ],
)
def test_errors_name_the_line(text: str, line_no: int | None, fragment: str) -> None:
    with pytest.raises(StoryboardError) as info:
        parse_storyboard(text)
    assert info.value.line_no == line_no
    assert fragment in str(info.value)
    if line_no is not None:
        assert str(info.value).startswith(f"line {line_no}: ")


def test_error_message_example_from_spec() -> None:
    with pytest.raises(StoryboardError, match=r"^line 3: times must increase \(12s after 20s\)$"):
        parse_storyboard("0s: a\n20s: b\n12s: c")


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan, math.inf, 700.0, 10.0, "x"])
def test_bad_total_seconds_argument(bad: object) -> None:
    with pytest.raises(StoryboardError):
        parse_storyboard("0s: a\n10s: b", total_seconds=bad)  # type: ignore[arg-type]


def test_huge_numbers_do_not_crash() -> None:
    with pytest.raises(StoryboardError, match="limit"):
        parse_storyboard("0s: a\n" + "9" * 5000 + ":00: b")
    with pytest.raises(StoryboardError, match="limit"):
        parse_storyboard("0s: a\n" + "9" * 400 + "s: b")


def test_storyboard_constructor_validates() -> None:
    with pytest.raises(StoryboardError):
        Storyboard(shots=(), duration=1.0)
    with pytest.raises(StoryboardError):
        Storyboard(shots=(Shot(0, 5, "a"), Shot(6, 8, "b")), duration=8.0)
    with pytest.raises(StoryboardError):
        Storyboard(shots=(Shot(0, 5, "a"),), duration=6.0)


def test_format_rejects_multiline_prompt() -> None:
    sb = Storyboard(shots=(Shot(0.0, 5.0, "a\nb"),), duration=5.0)
    with pytest.raises(StoryboardError):
        format_storyboard(sb)


def test_format_is_exact_for_awkward_floats() -> None:
    sb = Storyboard(
        shots=(Shot(0.0, 1e-05, "a"), Shot(1e-05, 0.1 + 0.2, "b"), Shot(0.1 + 0.2, 599.9999999999999, "c")),
        duration=599.9999999999999,
    )
    text = format_storyboard(sb)
    assert "e-" not in text  # positional notation, which the parser reads
    assert parse_storyboard(text) == sb


# ---------------------------------------------------------------- properties

_prompt = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30
).map(str.strip).filter(bool)


@st.composite
def storyboards(draw: st.DrawFn) -> Storyboard:
    step = draw(st.sampled_from([0.25, 0.1, 1.0, 1 / 3]))
    max_k = int(MAX_SECONDS / step) - 1
    ks = draw(st.lists(st.integers(1, max_k), max_size=8, unique=True))
    times = [0.0] + [k * step for k in sorted(ks)]
    end_k = draw(st.integers(1, 20))
    duration = min(times[-1] + end_k * step, MAX_SECONDS)
    prompts = draw(st.lists(_prompt, min_size=len(times), max_size=len(times)))
    ends = times[1:] + [duration]
    return Storyboard(tuple(Shot(s, e, p) for s, e, p in zip(times, ends, prompts)), duration)


_line_bits = st.sampled_from(
    ["0", "1", "5", "12", "60", "600", "9" * 30, ":", "s", "m", "h", ".", "-", "#", " ", "\n", "\r",
     "end", "total", "a", "\x00", "\ufeff", "\u2028", "٣"]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(_line_bits, max_size=40).map("".join)))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        sb = parse_storyboard(text)
    except StoryboardError as e:
        assert e.line_no is None or e.line_no >= 1
        return
    assert sb.shots[0].start == 0.0 and sb.duration <= MAX_SECONDS
    assert parse_storyboard(format_storyboard(sb)) == sb


@settings(max_examples=200, deadline=None)
@given(storyboards())
def test_round_trip(sb: Storyboard) -> None:
    assert parse_storyboard(format_storyboard(sb)) == sb


def test_a_return_is_a_repeated_prompt_whatever_its_case_spaces_or_closing_stop():
    from pfp_app.film.storyboard import prompt_key, shot_returns

    assert prompt_key("A red  fox .") == prompt_key("a red fox") == prompt_key("a red fox!")
    assert shot_returns(["a fox", "an owl", "A fox.", "an owl", "a fox"]) == [None, None, 0, 1, 0]
