"""Issue 15 #2-#6: export of long or odd storyboards, decodable length, overwrites, atomic writes, options.

Each test reproduces one failure the issue reports and checks the clear behaviour that replaced it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from pfp_app.io import atomic
from pfp_app.film.project import MARKER_FILE, Project
from pfp_app.film.storyboard import StoryboardError, parse_storyboard
from pfp_app.film.takes import list_takes
from pfp_app.app.studio import Studio
from pfp_app.io.video import MAX_COMMENT_CHARS, read_mp4_comment, video_info, write_mp4
from pfp_app.film.export import read_export_record
from pfp_app.app.studio.job_view import started_note

from test_cli import expect_error, run_cli

SHORT = "0s: a red fox in the snow\nend: 1s\n"  # one segment of tiny-random (8 frames)
FRAMES = np.zeros((4, 16, 16, 3), np.uint8)


def write_storyboard(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def generate(tmp_path, storyboard: Path, *extra):
    return ("generate", "--storyboard", str(storyboard), "--out", str(tmp_path / "film.mp4"), "--model", "tiny-random",
            "--steps", "1", "--device", "cpu", *extra)


# ------------------------------------------------------------------ 2. export never fails on the storyboard


def test_comment_of_any_length_and_any_character_round_trips_or_is_cut_with_a_note(tmp_path):
    odd = "PFP | a=b; #not a comment \\ back\n0s: é 日本 \t tab\n# line\n"
    assert read_mp4_comment(write_mp4(tmp_path / "odd.mp4", FRAMES, 8, comment=odd)) == odd
    big = "0s: " + "x" * 300_000  # over the ~128 KiB argv limit that made ffmpeg fail with E2BIG
    stored = read_mp4_comment(write_mp4(tmp_path / "big.mp4", FRAMES, 8, comment=big))
    assert len(stored) == MAX_COMMENT_CHARS and stored.startswith("0s: xxx") and "cut at 65,536 of 300,004" in stored


def test_cli_exports_a_storyboard_over_128_kib(tmp_path, capsys):
    story = write_storyboard(tmp_path / "long.txt", "0s: " + "a red circle " * 11_000 + "\nend: 1.5s\n")
    rc, out, err = run_cli(capsys, *generate(tmp_path, story))
    assert rc == 0, err
    record = read_export_record(tmp_path / "film.mp4")  # the storyboard is cut, the record before it is whole
    assert record.model == "tiny-random" and record.runs[0].sampler["steps"] == 1


def test_nul_byte_is_refused_before_the_model_loads(tmp_path, capsys):
    story = write_storyboard(tmp_path / "nul.txt", "0s: a fox\n1s: the f\x00x\nend: 2s\n")
    expect_error(capsys, generate(tmp_path, story), "line 2: contains a NUL character")


def test_latin1_file_is_refused_not_silently_mangled(tmp_path, capsys):
    story = write_storyboard(tmp_path / "latin1.txt", "0s: un caf\u00e9 au lait\nend: 2s\n".encode("latin-1"))
    expect_error(capsys, generate(tmp_path, story), "line 1: storyboard file 'latin1.txt' is not UTF-8 text (byte 0xe9)")


# ------------------------------------------------------------------ 3. decodable length, not the header's


@pytest.fixture
def half_written(tmp_path) -> Path:
    """An MP4 whose header (moov at the front) promises 80 frames, cut so that about half decode."""
    t = np.arange(80)[:, None, None, None]
    frames = ((np.arange(64)[None, None, :, None] * 3 + t * 7 + np.array([0, 90, 180])) % 256).astype(np.uint8)
    good = write_mp4(tmp_path / "good.mp4", frames.repeat(48, axis=1), fps=8, crf=0)
    data = good.read_bytes()
    bad = tmp_path / "half.mp4"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_video_info_counts_decodable_frames(half_written):
    info = video_info(half_written)
    assert info.header_frames == 80 and 0 < info.num_frames < 80 and info.damaged
    assert "damaged or half-written" in info.damage_note()


def test_recall_beyond_the_decodable_length_is_one_clear_error(half_written, capsys):
    info = video_info(half_written)
    at = (info.num_frames + 10) / info.fps  # inside the header's 10 s, after the last decodable frame
    expect_error(capsys, ["recall", "--video", str(half_written), "--at", f"{at:g}", "--out", "x.png",
                          "--model", "tiny-random"], "is outside the video (0 to")


def test_studio_upload_warns_and_cached_clip_checks_the_range(tmp_path, half_written):
    studio = Studio(tmp_path / "projects", model_spec="tiny-random").load()
    slider, msg = studio.inspector.upload_info(str(half_written))
    info = video_info(half_written)
    assert slider["maximum"] == pytest.approx(round(info.duration, 3)) and "half-written" in msg
    t = np.arange(40)[:, None, None, None]
    frames = ((np.arange(96)[None, None, :, None] * 2 + t * 5 + np.array([0, 80, 160])) % 256).astype(np.uint8)
    video = write_mp4(tmp_path / "clip.mp4", frames.repeat(72, axis=1), fps=10)
    studio.inspector.recall_upload(str(video), 3.0, 20, 2)  # fills the clip cache
    for bad in (1e9, float("inf"), float("nan")):
        with pytest.raises(gr.Error, match="outside"):
            studio.inspector.recall_upload(str(video), bad, 20, 2)


# ------------------------------------------------------------------ 4. no silent overwrites


def test_cli_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    mine = tmp_path / "my_stuff"
    mine.mkdir()
    for name, text in (("storyboard.txt", "my notes"), ("settings.json", "{}"), ("film.mp4", "my film")):
        (mine / name).write_text(text)
    story = write_storyboard(tmp_path / "s.txt", SHORT)
    expect_error(capsys, generate(tmp_path, story, "--project", str(mine)), "is not a PFP Studio project")
    assert sorted(p.name for p in mine.iterdir()) == ["film.mp4", "settings.json", "storyboard.txt"]
    assert (mine / "film.mp4").read_text() == "my film"


def test_cli_accepts_an_empty_folder_and_its_own_project_again(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    story = write_storyboard(tmp_path / "s.txt", SHORT)
    assert run_cli(capsys, *generate(tmp_path, story, "--project", str(empty)))[0] == 0
    assert (empty / MARKER_FILE).is_file()
    rc, _, err = run_cli(capsys, *generate(tmp_path, story, "--project", str(empty)))
    assert rc == 0 and "resuming: 1 finished segments" in err


def test_studio_generate_with_another_seed_keeps_the_previous_take(tmp_path):
    studio = Studio(tmp_path / "projects", model_spec="tiny-random").load()
    sb = "0s: a red striped circle\n1s: a blue dotted square\nend: 2.5s\n"  # two segments
    studio.generate("p", sb, 0, 1)
    p = Project(studio.root / "p")
    old = [p.segment_latents_path(i).read_bytes() for i in range(2)]
    events = []
    studio.generate("p", sb, 7, 1, emit=events.append)
    assert "the previous take is in takes/001/" in started_note(events[0])
    take = list_takes(p)[-1]
    assert [(take / "segments" / f"seg_{i:03d}.safetensors").read_bytes() for i in range(2)] == old
    assert (take / "storyboard.txt").read_text() == p.read_storyboard()
    assert p.segment_latents_path(0).read_bytes() != old[0]
    studio.generate("p", sb.replace("blue dotted", "green solid"), 7, 1)
    assert [t.name for t in list_takes(p)] == ["001", "002"]


# ------------------------------------------------------------------ 5. atomic writes, stale temps


def test_out_is_replaced_atomically_a_failed_copy_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    story = write_storyboard(tmp_path / "s.txt", SHORT)
    out = tmp_path / "film.mp4"
    out.write_bytes(b"the good old film")
    real_copy = shutil.copyfile

    def killed_midway(src, dst, *a, **k):  # what a kill -9 during the copy leaves: half the bytes
        real_copy(src, dst)
        with open(dst, "r+b") as f:
            f.truncate(100)
        raise OSError("killed")

    monkeypatch.setattr(shutil, "copyfile", killed_midway)
    rc, _, err = run_cli(capsys, *generate(tmp_path, story))
    assert rc == 2 and "killed" in err
    assert out.read_bytes() == b"the good old film"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_opening_a_project_removes_temps_of_dead_writers_only(tmp_path):
    p = Project(tmp_path / "proj")
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [p.segments_dir / ".seg_003.1234abcd.tmp.mp4", p.folder / ".film.deadbeef.tmp.mp4",
             p.folder / f".film.{dead_pid}.0badcafe.tmp.mp4", p.segments_dir / "seg_004.safetensors.tmp"]
    live = p.folder / f".film.{os.getpid()}.12345678.tmp.mp4"
    mine = p.folder / "notes.txt"
    for f in [*stale, live, mine]:
        f.write_bytes(b"x")
    Project(p.folder)
    assert [f.exists() for f in stale] == [False] * 4
    assert live.exists() and mine.exists()


def test_atomic_path_removes_the_temp_on_error(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


# ------------------------------------------------------------------ 6. options checked first, messages short


@pytest.mark.parametrize("flag, value, match", [
    ("--crf", "99", "--crf must be a whole number from 0 to 51, got '99'"),
    ("--steps", "0", "--steps must be a whole number from 1 to 1000, got '0'"),
    ("--steps", "-1", "--steps must be a whole number from 1 to 1000, got '-1'"),
    ("--steps", "1001", "--steps must be a whole number from 1 to 1000, got '1001'"),
    ("--seed", "-5", "--seed must be a whole number from 0 to 2147483647"),
    ("--fps", "abc", "--fps must be a whole number from 1 to 120, got 'abc'"),
    ("--profile", "turbo", "--profile must be one of auto, "),
    ("--device", "tpu", "--device must be one of auto, cpu, cuda; got 'tpu'"),
    ("--guidance", "0.5", "--guidance must be a number from 1 to 20, got '0.5'"),
    ("--guidance", "nan", "--guidance must be a number from 1 to 20, got 'nan'"),
])
def test_options_are_refused_before_the_model_loads(tmp_path, capsys, flag, value, match):
    story = write_storyboard(tmp_path / "s.txt", SHORT)
    argv = [a for a in generate(tmp_path, story) if a not in ("--steps", "1")] + [flag, value]
    expect_error(capsys, argv, match)  # alone: nothing else printed, so no model was loaded
    assert not (tmp_path / "film_project").exists()


def test_echoed_input_is_cut_short(tmp_path, capsys):
    story = write_storyboard(tmp_path / "s.txt", SHORT)
    rc, _, err = run_cli(capsys, *generate(tmp_path, story), "--seed", "9" * 10_000_000)
    assert rc == 2 and len(err) < 300 and "…'" in err
    story = write_storyboard(tmp_path / "bad.txt", "0s: a\n" + "1" + " " * 900_000 + "x: b\n")
    rc, _, err = run_cli(capsys, *generate(tmp_path, story))
    assert rc == 2 and len(err) < 300 and err.startswith("error: line 2: cannot parse time")


def test_studio_uses_the_same_option_checks(tmp_path):
    studio = Studio(tmp_path / "projects", model_spec="tiny-random").load()
    with pytest.raises(gr.Error, match="Steps must be a whole number from 1 to 1000, got '1001'"):
        list(studio.generate("p", SHORT, 0, 1001))
    with pytest.raises(gr.Error, match="Seed must be a whole number from 0 to 2147483647, got '-1'"):
        list(studio.generate("p", SHORT, -1, 2))


def test_nul_in_parse_names_the_line():
    with pytest.raises(StoryboardError, match="line 3: contains a NUL"):
        parse_storyboard("0s: a\n\n1s: b\x00\n")
