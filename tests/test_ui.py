"""Unit tests for the studio's callbacks (pfp_app.app.studio.Studio) with the tiny untrained model: no browser."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from pfp_app.film.export import read_export_record
from pfp_app.film.project import Project
from pfp_app.film.session import Done, Failed, SegmentDone, Started, Stopped
from pfp_app.film.storyboard import parse_storyboard
from pfp_app.app.jobs import Job
from pfp_app.app.studio import Studio
from pfp_app.app.studio import project_state as ps
from pfp_app.app.studio.job_view import end_message, job_status
from pfp_app.io.video import read_video, write_mp4

# tiny-random: at most 3 latent frames (1.5 s) per segment, cut at every shot; the first latent frame is the lead
# frame, left out of the film -> shot 1 (0-1 s) is one segment of 8 frames, shot 2 (1-2.5 s) one of 12
STORYBOARD = "# two shots, one segment each\n0s: a red striped circle\n1s: a blue dotted square\ntotal: 2.5s\n"
THREE = "0s: a red striped circle\n1s: a blue dotted square\n2.5s: a green triangle\nend: 4s\n"
STEPS = 2


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    return Studio(tmp_path_factory.mktemp("projects"), model_spec="tiny-random").load()


def run(studio, *args, kind="generate", **kw) -> Job:
    """A generation as the job queue runs it: a job holding the newest event of each kind, its status line."""
    job = Job("t", kind, {}, status="running")
    fn = {"generate": studio.generate, "regenerate": studio.regenerate}[kind]
    end = fn(*args, emit=lambda e: job.events.__setitem__(type(e).__name__, e), **kw)
    job.status = {Done: "done", Stopped: "stopped", Failed: "failed"}[type(end)]
    return job


def message(job: Job) -> str:
    return job_status(job)


def value(update):
    return update.get("value") if isinstance(update, dict) else update


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Generated:
    project: Project
    events: list  # every event the run emitted
    end: object


@pytest.fixture(scope="module")
def generated(studio) -> Generated:
    """The 2-shot storyboard generated into project 'film' (shared by the tests that only read it)."""
    events = []
    end = studio.generate("film", STORYBOARD, 0, STEPS, emit=events.append)
    return Generated(Project(studio.root / "film"), events, end)


@pytest.fixture
def film(generated) -> Project:
    return generated.project


# ------------------------------------------------------------------ storyboard editor


def test_check_valid_storyboard_fills_table_and_pickers(studio):
    rows, msg, shots, export, prompt = studio.check(STORYBOARD)
    assert [r[0] for r in rows] == [1, 2] and rows[1][1:4] == ["1", "2.5", 1] and rows[1][4] == "a blue dotted square"
    assert "2 shots" in msg and "2 segments" in msg
    assert [v for _, v in shots["choices"]] == [0, 1] and shots["value"] == 0
    assert export["choices"][0] == ("Whole film", -1) and len(export["choices"]) == 3


@pytest.mark.parametrize("text, needle", [
    ("0s: a\n1:05 b\n", "line 2"),
    ("5s: starts late\n", "line 1"),
    ("0s: a\n3s: b\n2s: c\n", "line 3"),
    ("", "no shots"),
    ("0s: a\nend: 99:00\n", "limit"),
])
def test_check_names_the_bad_line(studio, text, needle):
    rows, msg, shots, _, _ = studio.check(text)
    assert rows == [] and "Storyboard error" in msg and needle in msg
    assert shots["choices"] == []


def test_check_shows_the_real_cut_beside_a_typed_time_off_the_codec_grid(studio):
    rows, msg, _, _, prompt = studio.check("0s: a\n1.3s: b\ntotal: 2.9s\n")
    assert rows[1][1] == "1.3 → 1.5" and rows[1][2] == "2.9 → 2.875" and rows[0][1] == "0"
    assert "shot 2 1.3 s → 1.5 s" in msg and "end 2.9 s → 2.875 s" in msg and "0.5-s steps" in msg
    assert prompt == "a"


def test_shots_closer_than_a_codec_step_are_named(studio):
    rows, msg, _, _, _ = studio.check("0s: a\n1s: b\n1.2s: c\ntotal: 3s\n")
    assert rows == [] and "1.2s and 1s are closer than the codec's time step" in msg


def test_presets_load_and_parse(studio):
    names = studio.presets()
    assert names
    for name in names:
        assert "Valid" in studio.check(studio.load_preset(name))[1]
    with pytest.raises(gr.Error):
        studio.load_preset("../../etc/passwd")


# ------------------------------------------------------------------ generation


def test_generate_writes_every_segment_and_reports_each_step(studio, generated):
    film, events = generated.project, generated.events
    assert film.finished_segments() == 2 and isinstance(generated.end, Done)
    for i in range(2):
        assert film.segment_video_path(i).is_file() and film.segment_record_path(i).is_file()
    segs = [e for e in events if isinstance(e, SegmentDone)]
    assert [e.video for e in segs] == [film.segment_video_path(0), film.segment_video_path(1)]  # previewed at once
    assert sum(type(e).__name__ == "Step" for e in events) == 2 * STEPS  # per step of every segment
    assert (film.folder / "previews" / "film.mp4").is_file()  # the film so far, written when the run ends
    rec = json.loads(film.segment_record_path(1).read_text())
    assert rec["prompt"] == "a blue dotted square" and rec["seed"] == 0 and rec["sampler"]["steps"] == STEPS
    assert (studio.root / ".last").read_text() == "film"
    assert studio._slider(film)["maximum"] == pytest.approx(19 / 8)  # 20 frames at 8 fps: exactly 2.5 s


def test_the_status_line_formats_the_events(studio, generated):
    job = Job("j", "generate", {}, status="running")
    step = next(e for e in generated.events if type(e).__name__ == "Step")
    job.events = {"Started": generated.events[0], "Step": step}
    assert "segment 1 of 2" in job_status(job) and "pfp-step-progress" in job_status(job)
    job.events["Done"], job.status = generated.end, "done"
    assert "Done: 2 segments in" in job_status(job)
    assert "Stopped. 1 finished segment kept" in end_message(Stopped(1, 2))
    oom = Failed(torch.cuda.OutOfMemoryError("CUDA out of memory"), 1, 2)
    assert "Out of GPU memory. 1 finished segments are kept" in end_message(oom)
    bug = end_message(Failed(ZeroDivisionError("division by zero"), 0, 2))
    assert "Generating failed (ZeroDivisionError" in bug and "the app is still usable" in bug


def test_generate_again_keeps_everything(studio, film):
    before = digest(film.segment_latents_path(1))
    job = run(studio, "film", STORYBOARD, 0, STEPS)
    assert "Nothing to generate" in message(job)
    assert digest(film.segment_latents_path(1)) == before


def test_generate_after_editing_the_last_shot_keeps_the_first(studio):
    run(studio, "edit", STORYBOARD, 0, STEPS)
    p = Project(studio.root / "edit")
    first, second = digest(p.segment_latents_path(0)), digest(p.segment_latents_path(1))
    job = run(studio, "edit", STORYBOARD.replace("blue dotted", "yellow solid"), 0, STEPS)
    assert job.events["Started"].kept == 1 and "(1 earlier segment kept)" in message(job)
    assert digest(p.segment_latents_path(0)) == first and digest(p.segment_latents_path(1)) != second
    assert job.events["Started"].take.name == "001"  # the replaced segment is kept as a take


def test_regenerate_shot_keeps_earlier_segments_byte_identical(studio):
    run(studio, "regen", STORYBOARD, 0, STEPS)
    p = Project(studio.root / "regen")
    kept = {f.name: digest(f) for f in p.segments_dir.glob("seg_000.*")}
    old = digest(p.segment_latents_path(1))
    _, _, new_text, _ = studio.shot_edit(STORYBOARD, 1, "a purple solid square")
    job = run(studio, "regen", STORYBOARD, 1, "a purple solid square", 7, STEPS, kind="regenerate")
    assert {f.name: digest(f) for f in p.segments_dir.glob("seg_000.*")} == kept
    assert digest(p.segment_latents_path(1)) != old and p.finished_segments() == 2
    # the prompt changes in the text as typed: comment and `total:` kept
    assert new_text == STORYBOARD.replace("a blue dotted square", "a purple solid square")
    assert "Done: 1 segment in" in message(job) and "(1 earlier segment kept)" in message(job)
    assert Project(studio.root / "regen").read_storyboard() == new_text
    assert [p.read_segment_record(i)["seed"] for i in range(2)] == [0, 7]
    assert [(r.start, r.seed) for r in read_export_record(studio.export("regen", 20)[0]).runs] == [(0, 0), (1, 7)]
    # Generate afterwards (with the film's seed) has nothing left to do: the regenerated shot is not undone
    assert "Nothing to generate" in message(run(studio, "regen", new_text, 0, STEPS))
    assert studio.open_project("regen")[2] == 0  # reopened: the film's seed, not the regenerated shot's


def test_stop_keeps_finished_segments(studio):
    events = []
    end = studio.generate("stopped", THREE, 0, STEPS, emit=events.append,
                          should_stop=lambda: any(isinstance(e, SegmentDone) for e in events))
    p = Project(studio.root / "stopped")
    assert isinstance(end, Stopped) and "1 finished segment kept" in end_message(end)
    assert p.finished_segments() == 1 and p.segment_video_path(0).is_file()
    assert not studio.busy
    job = run(studio, "stopped", THREE, 0, STEPS)  # resumes: the finished segment is kept
    assert job.events["Started"].kept == 1 and p.finished_segments() == 3


def test_the_inspector_is_refused_while_a_generation_holds_the_model(studio, film):
    with studio.using_model("a generation"):
        with pytest.raises(gr.Error, match="Busy: a generation is running"):
            with studio.using_model("an export"):
                pass
        with pytest.warns(UserWarning, match="Busy"):
            out = studio.inspector.inspect("film", 0.5, STEPS)
        assert all(u == {"__type__": "update"} for u in out)
    assert not studio.busy


def test_failure_in_a_job_is_an_event_and_the_app_stays_usable(studio, film, monkeypatch):
    import pfp_app.sampling.pipeline as pipeline_module

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline_module, "sample", oom)
    end = studio.generate("oom", STORYBOARD, 0, STEPS)
    assert isinstance(end, Failed) and end.out_of_memory and "Out of GPU memory" in end_message(end)
    monkeypatch.setattr(pipeline_module, "sample", lambda *a, **k: 1 / 0)
    end = studio.generate("oom", STORYBOARD, 0, STEPS)
    assert isinstance(end, Failed) and isinstance(end.error, ZeroDivisionError)
    monkeypatch.undo()
    assert not studio.busy
    assert studio.inspector.inspect("film", 0.5, STEPS)[3].count("PSNR") == 2  # the next job works


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", "..", "", ".hidden", "x" * 81, "a\\b", "nul\0"])
def test_unsafe_project_names_are_refused(studio, name):
    with pytest.raises(gr.Error, match="refused"):
        studio.generate(name, STORYBOARD, 0, STEPS)
    with pytest.raises(gr.Error, match="refused"):
        studio.save_storyboard(name, STORYBOARD)
    if name:
        with pytest.raises(gr.Error, match="refused"):
            studio.open_project(name)
    assert not (studio.root.parent / "escape").exists()


def test_bad_settings_are_refused(studio):
    with pytest.raises(gr.Error, match="Storyboard error"):
        studio.checked_request("bad", "0s: a\n1:05 b", 0, STEPS)
    with pytest.raises(gr.Error, match="Steps"):
        studio.generate("bad", STORYBOARD, 0, 0)
    with pytest.raises(gr.Error, match="Seed"):
        studio.checked_request("bad", STORYBOARD, -1, STEPS)


# ------------------------------------------------------------------ projects


def test_reopening_restores_the_last_project(studio, film):
    studio.save_storyboard("film", STORYBOARD + "# my note\n")
    again = Studio(studio.root, model_spec="tiny-random")
    again.pipe = studio.pipe  # same model, no reload
    picker, text, seed, steps, preview, status, slider, msg = again.restore()
    assert picker["value"] == "film" and text.endswith("# my note\n")
    assert (seed, steps) == (0, STEPS) and preview == str(film.segment_video_path(1))
    assert "2 of 2 segments" in msg and slider["maximum"] == pytest.approx(19 / 8)
    assert "**" not in status and "<b>film</b>" in status  # the status renders the name, no raw Markdown
    out = again.open_project("brand new")
    assert out[0]["value"] == "brand new" and out[4] is None and "New project" in out[7]
    assert ps.last_project(studio.root) is None  # the new project has no folder yet
    studio.open_project("film")


def test_open_and_check_give_the_shot_table_of_the_text_the_editor_will_show(studio, film):
    """Open and check are one event: the table is the opened project's, whatever the editor held before; a new
    project keeps the editor's text, and the table is that text's."""
    other = "0s: a red solid circle in front of the brick wall\ntotal: 3s\n"
    out = studio.open_and_check("film", other)
    opened, (rows, message, shots, export, prompt) = out[:8], out[8:]
    assert opened[1] == ps.read_editor_text(film) and rows == studio.check(opened[1])[0]
    assert len(rows) == len(parse_storyboard(opened[1]).shots) != 1
    assert prompt == parse_storyboard(opened[1]).shots[0].prompt
    out = studio.open_and_check("brand new", other)
    assert out[1]["__type__"] == "update" and len(out[8]) == 1 and out[12] == "a red solid circle in front of the brick wall"
    studio.open_project("film")
    out = studio.restore_and_check(other)  # page load: the last project, checked in the same event
    assert out[0]["value"] == "film" and out[8] == studio.check(ps.read_editor_text(film))[0]


# ------------------------------------------------------------------ per-shot preview and export


def test_shot_preview_is_one_playable_mp4(studio, film):
    path = Path(studio.shot_preview("film", 1))
    frames, fps = read_video(path)
    assert fps == 8 and len(frames) == 12  # shot 2 (1-2.5 s): 4 x 3 latent frames
    with pytest.raises(gr.Error, match="no shot 3"):
        studio.shot_preview("film", 2)


def test_export_writes_mp4_with_storyboard_seeds_and_settings(studio, film):
    path, msg = studio.export("film", 23, -1)
    assert Path(path) == film.film_path and "2 segments" in msg
    frames, fps = read_video(path)
    assert frames.shape == (20, 64, 64, 3) and fps == 8  # exactly 2.5 s
    record = read_export_record(path)
    assert record.model == "tiny-random" and [(r.start, r.seed) for r in record.runs] == [(0, 0)]
    assert record.sampler_of(0, studio.model.sampler) == studio.model.sampler.overridden(steps=STEPS)
    assert "1s: a blue dotted square" in record.storyboard
    shot_path, _ = studio.export("film", 30, 0)
    assert Path(shot_path).name == "shot_01.mp4" and len(read_video(shot_path)[0]) == 8
    with pytest.raises(gr.Error, match="CRF"):
        studio.export("film", 60, -1)
    with pytest.raises(gr.Error, match="does not exist"):
        studio.export("nothing here", 23, -1)


def test_studio_and_cli_exports_both_restore_the_same_film(studio, film, tmp_path, capsys):
    """An export made by the studio, restored by the CLI, and one made by the CLI, restored by the studio: the
    same latents as the original film (the record holds every segment's seed and sampler settings)."""
    from pfp_app.app.cli import main

    studio_export = Path(studio.export("film", 18)[0])
    assert main(["generate", "--restore", "--from", str(studio_export), "--out", str(tmp_path / "cli.mp4"),
                 "--model", "tiny-random"]) == 0
    assert torch.equal(Project(tmp_path / "cli_project").load_history(), film.load_history())
    studio.queue_restore("from cli", tmp_path / "cli.mp4")
    assert isinstance(studio.restore_export("from cli"), Done)
    assert torch.equal(Project(studio.root / "from cli").load_history(), film.load_history())


# ------------------------------------------------------------------ memory inspector


def test_inspector_recalls_a_frame_of_the_history(studio, film, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("the inspector decoded the whole history")

    monkeypatch.setattr(studio.pipe, "decode_history", no_decode)
    studio.inspector._history_cache = None  # the first recall after opening
    truth, recalled, heat, md = studio.inspector.inspect("film", 1.25, STEPS)
    film_frames = np.concatenate([read_video(film.segment_video_path(i))[0] for i in range(2)])
    assert np.array_equal(truth[::4, ::4], film_frames[10])  # the film's frame at 1.25 s, zoomed 4x
    for img in (truth, recalled, heat):
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (256, 256, 3)
    for needle in ("frame 10", "PSNR", "SSIM", "baseline PSNR", "memory tokens", "compression ratio"):
        assert needle in md
    last = studio.inspector.inspect("film", 99, STEPS)[3]  # past the end: the last frame
    assert "frame 19" in last and "2.38 s" in last


def test_inspector_without_history_says_what_to_do(studio):
    studio.save_storyboard("empty", STORYBOARD)
    assert "Generate at least one segment" in studio.inspector.inspect("empty", 0, STEPS)[3]


def test_recall_from_an_uploaded_video(studio, tmp_path):
    t = np.arange(40)[:, None, None, None]
    x = np.arange(96)[None, None, :, None]
    frames = ((x * 2 + t * 5 + np.array([0, 80, 160])) % 256).astype(np.uint8).repeat(72, axis=1)  # (40,72,96,3)
    video = write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    slider, msg = studio.inspector.upload_info(str(video))
    assert slider["maximum"] == pytest.approx(4.0) and "96×72" in msg
    truth, recalled, heat, md = studio.inspector.recall_upload(str(video), 3.0, 20, STEPS)
    assert truth.shape == recalled.shape == heat.shape == (256, 256, 3)
    assert "PSNR" in md and "3.00 s" in md



def test_upload_recall_compresses_the_window_around_the_time_and_reuses_it(studio, tmp_path, monkeypatch):
    from pfp_app.app.studio import inspector_view as studio_module

    frames = np.broadcast_to(((np.arange(48) * 5) % 256).astype(np.uint8)[:, None, None, None], (48, 64, 64, 3))
    video = write_mp4(tmp_path / "ramp.mp4", frames, fps=8, crf=0)  # 6 s, frame i is grey level 5 i
    windows = []
    encode = studio_module.encode_clip
    monkeypatch.setattr(studio_module, "encode_clip",
                        lambda pipe, clip, progress=None: windows.append(clip.first_time) or encode(pipe, clip, progress))
    steps = []
    for at in (5.0, 4.5, 0.5):  # history 2 s: [3, 5] holds 4.5 too; 0.5 s needs the first 2 s
        truth, _, _, md = studio.inspector.recall_upload(str(video), at, 2, STEPS, progress=lambda f, desc="": steps.append(desc))
        assert f"{at:.2f} s" in md
        assert abs(truth.mean() - 5 * round(at * 8)) < 2  # the true frame is the one at `at`
    assert windows == [3.0, 0.0]
    assert any("compressing" in d for d in steps) and any("reading" in d for d in steps)


def test_unreadable_or_huge_uploads_are_refused(studio, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    slider, msg = studio.inspector.upload_info(str(junk))
    assert "cannot read video 'junk.mp4'" in msg and slider["interactive"] is False
    with pytest.raises(gr.Error, match="cannot read video"):
        studio.inspector.recall_upload(str(junk), 0.0, 20, STEPS)
    huge = tmp_path / "huge.mp4"
    with open(huge, "wb") as f:  # sparse: takes no disk space
        f.truncate(2 * 1024**3 + 1)
    assert os.path.getsize(huge) > 2 * 1024**3
    assert "limited to 2 GiB" in studio.inspector.upload_info(str(huge))[1]
    with pytest.raises(gr.Error, match="limited to 2 GiB"):
        studio.inspector.recall_upload(str(huge), 0.0, 20, STEPS)


# ------------------------------------------------------------------ model and app entry


def test_model_panel_says_when_the_model_is_untrained(studio):
    assert "UNTRAINED" in studio.model_markdown()
    assert studio.memory_rate_text().startswith("4x4x2")


def test_missing_default_model_falls_back_to_tiny_random(tmp_path, monkeypatch):
    import pfp_app.model.bundle as model_mod

    monkeypatch.setattr(model_mod, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    s = Studio(tmp_path / "p", model_spec="default").load()
    assert s.model.name == "tiny-random" and not s.model.trained
    assert "missing" in s.model_markdown() and "UNTRAINED" in s.model_markdown()


def test_app_flags_are_safe_by_default():
    import app

    args = app.build_parser().parse_args([])
    assert (args.listen, args.share, args.port, args.projects, args.model) == (False, False, 7860, "projects", "default")
    assert app.build_parser().parse_args(["--listen"]).listen


def test_app_builds_the_blocks_without_launching(studio):
    from pfp_app.app.studio import build_demo

    demo = build_demo(studio)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"storyboard", "generate", "stop", "preview", "inspect-time", "export", "upload-video"} <= ids


def test_runtime_profiles_are_offered_when_installed(studio):
    runtime = studio.runtime
    if runtime is None:
        assert studio.profile_choices() == ["auto"]  # CPU only
        pytest.skip("pfp_app.runtime is not importable: the studio runs on the CPU only")
    assert studio.profile_choices()[0] == "auto" and "cpu" in studio.profile_choices()
    assert isinstance(studio.generate("profiled", STORYBOARD, 0, STEPS, "cpu"), Done)
    assert "cpu" in studio.profile_note
    if not torch.cuda.is_available():
        with pytest.raises(gr.Error, match="Cannot apply runtime profile 'resident'"):
            studio.generate("profiled", STORYBOARD, 0, STEPS, "resident")
        assert not studio.busy


def test_loading_a_preset_after_generating_resets_the_shot_controls(studio, film):
    """The regenerate box shows the new storyboard's shot 1, so Regenerate cannot rewrite it with the old prompt."""
    from pfp_app.film.storyboard import parse_storyboard

    assert studio.check(STORYBOARD)[4] == "a red striped circle"
    preset = studio.load_preset("two_friends")
    rows, _, shots, _, prompt = studio.check(preset)
    assert prompt == parse_storyboard(preset).shots[0].prompt != "a red striped circle"
    assert shots["value"] == 0 and len(rows) == 4


def test_reopened_editor_keeps_comments_and_total(studio, film):
    text = studio.open_project("film")[1]
    assert text.startswith("# two shots") and "total: 2.5s" in text and "end:" not in text


# ------------------------------------------------------------------ returns


RETURNING = "0s: a red striped circle\n1s: a blue dotted square\n2.5s: A red striped circle.\nend: 4s\n"


def test_the_shot_table_marks_a_return_and_the_inspector_compares_it(studio):
    rows, msg, _, _, _ = studio.check(RETURNING)
    assert [r[5] for r in rows] == ["", "", "shot 1"]  # the same prompt, whatever its case or full stop
    assert "shot 3 returns to shot 1" in msg
    assert isinstance(studio.generate("returns", RETURNING, 0, STEPS), Done)
    picker = studio.inspector.return_choices("returns")
    assert picker["choices"] == [("Shot 3 returns to shot 1", 2)] and picker["value"] == 2
    first, recalled, returned, md = studio.inspector.compare_return("returns", 2, STEPS)
    p = Project(studio.root / "returns")
    film = np.concatenate([read_video(p.segment_video_path(i))[0] for i in range(p.finished_segments())])
    # each shot's second frame (the codec blends a cut's first frame with the shot before): film frames 1 and 21
    assert np.array_equal(first[::4, ::4], film[1]) and np.array_equal(returned[::4, ::4], film[21])
    assert recalled.shape == first.shape == returned.shape == (256, 256, 3)
    assert "Shot 3 (2.5 s) returns to shot 1 (0 s)" in md and md.count(" dB ") == 2 and "tokens" in md
    assert "returns to an earlier one" in studio.inspector.compare_return("returns", 1, STEPS)[3]
