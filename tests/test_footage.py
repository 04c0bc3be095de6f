"""Continuing from footage: preparation, the join by latents, project storage, export, re-opening an export,
and every bad input (one clear message, nothing half-written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pfp_app.film import footage as fm
from pfp_app.app.cli import main
from pfp_app.film.export import read_export_record, write_film
from pfp_app.film.session import GenerationSession
from pfp_app.film.footage import FootageError, check_footage, prepare_footage, save_footage
from pfp_app.model.causal_decode import WARMUP_LATENTS
from pfp_app.film.project import Project
from pfp_app.io.video import read_mp4_comment, read_video, write_mp4

STORY = "0s: a red fox in the snow\n1.5s: the fox runs across a frozen lake\nend: 3s\n"


def _video(path: Path, n: int = 20, size=(48, 80), fps: float = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_mp4(path, rng.integers(0, 255, (n, *size, 3), dtype=np.uint8), fps)
    return path


def _image(path: Path, size=(40, 30), colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


# ---- preparation --------------------------------------------------------------------------------------

def test_video_footage_is_resampled_to_the_model_and_ends_at_the_videos_end(tiny_pipeline, tmp_path):
    v = tiny_pipeline.model.video
    f = prepare_footage(tiny_pipeline, _video(tmp_path / "in.mp4", n=24, fps=12))  # 2 s
    # 2 s at 8 fps = 16 frames, trimmed to the codec's 1 + 4k: 13, encoded once to 4 latent frames
    assert f.frames.shape == (3, 13, v.height, v.width)
    assert f.latents.shape[2] == 4 and f.seconds == pytest.approx(13 / 8)
    src, _ = read_video(tmp_path / "in.mp4", size=(v.height, v.width))
    # nearest-frame resampling 12 -> 8 fps, backwards from the end (as uploads are prepared for a recall at the
    # video's end): the footage's last frame is the video's last frame, 23 of 0..23
    assert torch.equal(f.frames[:, -1], torch.as_tensor(src[23]).permute(2, 0, 1).float().div(127.5).sub(1))


def test_stills_are_held_for_the_still_duration_in_name_order(tiny_pipeline, tmp_path):
    folder = tmp_path / "stills"
    folder.mkdir()
    _image(folder / "img10.png", colour=(0, 0, 255))
    _image(folder / "img2.png", colour=(255, 0, 0))
    (folder / "notes.txt").write_text("ignored")
    f = prepare_footage(tiny_pipeline, folder, still_seconds=1.0)
    # 2 stills x 8 frames = 16 -> 13 (the first still's first 3 frames are trimmed); img2 before img10
    assert f.frames.shape[1] == 13
    red, blue = f.frames[:, 0].mean(dim=(1, 2)), f.frames[:, -1].mean(dim=(1, 2))
    assert red[0] > 0.9 and red[2] < -0.9 and blue[2] > 0.9 and blue[0] < -0.9
    one = prepare_footage(tiny_pipeline, _image(tmp_path / "one.jpg"), still_seconds=2.0)
    assert one.frames.shape[1] == 13 and torch.allclose(one.frames[:, 0], one.frames[:, -1])


# ---- bad input: one clear message each -------------------------------------------------------------------

def test_bad_footage_gets_one_clear_message_each(tmp_path, monkeypatch):
    (tmp_path / "notes.mp4").write_text("this is not a video")
    with pytest.raises(FootageError, match="'notes.mp4' is neither a video nor an image"):
        check_footage(tmp_path / "notes.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(FootageError, match=r"'empty.mp4' is empty \(0 bytes\)"):
        check_footage(tmp_path / "empty.mp4")
    _video(tmp_path / "one.mp4", n=1)
    with pytest.raises(FootageError, match="'one.mp4' has only 1 frame: footage needs motion"):
        check_footage(tmp_path / "one.mp4")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("x")
    with pytest.raises(FootageError, match="folder 'nothing' holds no images"):
        check_footage(tmp_path / "nothing")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _image(mixed / "a.png", (40, 30))
    _image(mixed / "b.png", (64, 48))
    with pytest.raises(FootageError, match="'a.png' is 40×30, 'b.png' is 64×48; give stills of one size"):
        check_footage(mixed)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FootageError, match="'broken.png' is not a readable image"):
        check_footage(tmp_path / "broken.png")
    with pytest.raises(FootageError, match="not found"):
        check_footage(tmp_path / "missing.mp4")
    with pytest.raises(FootageError, match="still duration must be above 0"):
        check_footage(mixed / "a.png", still_seconds=0)
    big = _video(tmp_path / "big.mp4")
    monkeypatch.setattr(fm, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(FootageError, match="'big.mp4' is larger than the upload limit"):
        check_footage(big)


def test_too_short_footage_is_refused_with_what_it_needs(tiny_pipeline, tmp_path):
    with pytest.raises(FootageError, match=r"'short.mp4' is too short: 1 frame\(s\) at the model's 8 fps; footage needs "
                                           r"at least 0.62 s"):
        prepare_footage(tiny_pipeline, _video(tmp_path / "short.mp4", n=3, fps=12))
    with pytest.raises(FootageError, match=r"raise the still duration"):
        prepare_footage(tiny_pipeline, _image(tmp_path / "s.png"), still_seconds=0.25)


def test_nothing_is_half_written_when_saving_footage_fails(tiny_pipeline, tmp_path, monkeypatch):
    project = Project(tmp_path / "p")
    src = _video(tmp_path / "in.mp4")
    f = prepare_footage(tiny_pipeline, src)

    def broken(*a, **k):
        raise OSError("disk full")

    before = sorted(p.name for p in project.folder.iterdir())
    monkeypatch.setattr(fm, "write_mp4", broken)
    with pytest.raises(OSError, match="disk full"):
        save_footage(project, f, check_footage(src))
    assert sorted(p.name for p in project.folder.iterdir()) == before  # no footage/, no temporary folder
    assert "footage" not in before


def test_footage_is_not_replaced_under_generated_segments(tiny_pipeline, tmp_path):
    project = Project(tmp_path / "p")
    _run(tiny_pipeline, project, "0s: a\nend: 1s")
    with pytest.raises(FootageError, match="already holds 1 generated segment.*nothing was changed"):
        save_footage(project, prepare_footage(tiny_pipeline, _video(tmp_path / "in.mp4")))
    assert not fm.has_footage(project)


def _run(pipe, project, text, seed=0, **plan_kw):
    session = GenerationSession(pipe, project)
    plan = session.plan(text, seed, pipe.model.sampler.overridden(steps=1), **plan_kw)
    events = []
    session.run(plan, events.append)
    return [e for e in events if type(e).__name__ == "SegmentDone"]


# ---- the join and the history --------------------------------------------------------------------------

def test_generation_continues_the_footage_latents(tiny_pipeline, tmp_path):
    """The footage seeds the history: memory from the first segment on, time positions after it, and the first
    segment decoded with the footage's last LATENT frames as warm-up (never re-encoded from pixels)."""
    src = _video(tmp_path / "in.mp4")
    f = prepare_footage(tiny_pipeline, src)
    project = Project(tmp_path / "p")
    save_footage(project, f, check_footage(src))
    (copy,) = [p for p in fm.footage_dir(project).iterdir() if p.name.startswith("source")]
    assert copy.read_bytes() == src.read_bytes()
    one_step = tiny_pipeline.model.sampler.overridden(steps=1)
    _run(tiny_pipeline, project, STORY)  # the session starts the project's film from its footage
    res = tiny_pipeline.generate(STORY, 0, one_step, footage=f.latents)
    assert torch.equal(project.load_history(), torch.cat([x.latents for x in res], dim=2))
    bare = tiny_pipeline.generate(STORY, 0, one_step)
    assert res[0].memory_tokens > 0 and bare[0].memory_tokens == 0
    other = tiny_pipeline.generate(STORY, 0, one_step, footage=torch.zeros_like(f.latents))
    assert not torch.allclose(res[0].latents, other[0].latents)  # the footage's memory changes what is drawn
    assert sum(x.frames.shape[1] for x in res) == sum(x.frames.shape[1] for x in bare) == 24  # 3 s either way
    ctx = f.latents[:, :, -WARMUP_LATENTS:]
    expected = tiny_pipeline.model.codec.decode_continuation(ctx, res[0].latents)[0]
    r = tiny_pipeline.model.codec.temporal_ratio
    assert res[0].frames.shape[1] == r * res[0].segment.num_latents  # no lead frame: it continues the footage
    assert torch.allclose(res[0].frames, expected, atol=1e-4)

    history, frames = fm.history_with_footage(tiny_pipeline, project)
    assert history.shape[2] == f.latents.shape[2] + sum(x.segment.num_latents for x in res)
    assert frames.shape[1] == tiny_pipeline.model.codec.pixel_frames(history.shape[2])
    assert torch.allclose(frames[:, f.num_frames:f.num_frames + res[0].frames.shape[1]], res[0].frames, atol=2e-5)
    assert project.read_settings()["footage"]["source"] == "in.mp4"

    # regenerating a shot keeps the footage and everything before the shot
    seg0 = project.load_history(1).clone()
    again = _run(tiny_pipeline, project, STORY, seed=5, from_shot=1)
    assert again[0].segment == 1 and again[0].memory_tokens == res[1].memory_tokens
    assert torch.equal(project.load_history(1), seg0) and fm.has_footage(project)

    # export: with the footage (default) or the generated part only, said in the record
    film = write_film(project)
    gen_only = write_film(project, tmp_path / "gen.mp4", with_footage=False)
    assert len(read_video(film)[0]) == f.num_frames + len(read_video(gen_only)[0]) == frames.shape[1]
    assert read_export_record(film).footage_frames == f.num_frames and f'"footage_frames":{f.num_frames}' in read_mp4_comment(film)
    assert read_export_record(gen_only).footage_excluded


# ---- re-opening an export (the records themselves: tests/test_session.py) --------------------------------

def _cli(capsys, *argv):
    rc = main(list(argv))
    c = capsys.readouterr()
    return rc, c.out, c.err


def test_cli_continues_footage_and_restores_an_export_exactly(tmp_path, capsys):
    (tmp_path / "story.txt").write_text(STORY)
    src = _video(tmp_path / "clip.mp4")
    base = ["--model", "tiny-random", "--steps", "1", "--device", "cpu", "--seed", "4"]
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--from", str(src),
                        "--out", str(tmp_path / "film.mp4"), *base)
    assert rc == 0, err
    assert "footage 'clip.mp4': 13 frames = 1.62 s" in err and "storyboard times count from its end" in err
    first = Project(tmp_path / "film_project")
    assert fm.has_footage(first) and len(read_video(tmp_path / "film.mp4")[0]) == 13 + 2 * 12
    again = ["generate", "--storyboard", str(tmp_path / "story.txt"), "--out", str(tmp_path / "film.mp4"), *base]
    rc, out, err = _cli(capsys, *again, "--from", str(src))  # a killed run resumes: same footage, nothing redone
    assert rc == 0 and "resuming: 2 finished segments" in err and "segment 1/2" not in err
    old = first.load_history()
    rc, out, err = _cli(capsys, *again, "--from", str(_video(tmp_path / "other.mp4", seed=1)))  # another footage:
    assert rc == 0 and "made from another footage: kept in" in err  # what was made from the first is a take
    take = first.folder / "takes" / "001"
    assert fm.footage_meta(first)["source"] == "other.mp4" and (take / "segments" / "seg_001.safetensors").is_file()
    assert not torch.equal(first.load_history(), old)
    rc, out, err = _cli(capsys, *again, "--from", str(src))  # and back: the film made from clip.mp4 again
    assert rc == 0 and torch.equal(first.load_history(), old)

    # an export of the app: refused as footage unless the user says which they want
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--from",
                        str(tmp_path / "film.mp4"), "--out", str(tmp_path / "x.mp4"), *base)
    assert rc == 2 and "was exported by PFP Studio" in err and "--restore" in err and "--as-footage" in err
    assert not (tmp_path / "x_project").exists()

    rc, out, err = _cli(capsys, "generate", "--restore", "--from", str(tmp_path / "film.mp4"),
                        "--out", str(tmp_path / "restored.mp4"), "--model", "tiny-random", "--device", "cpu")
    assert rc == 0, err
    second = Project(tmp_path / "restored_project")
    assert second.read_storyboard() == first.read_storyboard()
    assert second.read_settings()["seed"] == 4 and second.read_settings()["sampler_settings"]["steps"] == 1
    assert fm.load_footage_latents(second).shape == fm.load_footage_latents(first).shape
    assert len(read_video(tmp_path / "restored.mp4")[0]) == len(read_video(tmp_path / "film.mp4")[0])
    # the footage comes back through the MP4 (lossy), so the film is regenerated from a near-identical history
    assert second.finished_segments() == first.finished_segments()

    rc, out, err = _cli(capsys, "generate", "--restore", "--from", str(src), "--out", str(tmp_path / "y.mp4"), *base)
    assert rc == 2 and "'clip.mp4' was not exported by PFP Studio" in err


def test_cli_bad_footage_fails_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "story.txt").write_text(STORY)
    (tmp_path / "empty").mkdir()
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--from",
                        str(tmp_path / "empty"), "--out", str(tmp_path / "o.mp4"), "--model", "tiny-random")
    assert rc == 2 and err.strip() == "error: folder 'empty' holds no images (.png, .jpg, .jpeg, .webp, .bmp)"
    assert not (tmp_path / "o_project").exists()


def rec_defaults():
    from pfp_app.model.bundle import MODEL_CONFIGS

    return MODEL_CONFIGS["tiny"].sampler


def test_cli_guidance_is_used_recorded_in_the_export_and_restored(tmp_path, capsys):
    """--guidance overrides the model's; the export's comment records it and --restore generates with it."""
    (tmp_path / "story.txt").write_text(STORY)
    base = ["--model", "tiny-random", "--steps", "1", "--device", "cpu"]
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--guidance", "2.5",
                        "--out", str(tmp_path / "film.mp4"), *base)
    assert rc == 0, err
    assert Project(tmp_path / "film_project").read_settings()["sampler_settings"]["guidance_scale"] == 2.5
    rec = read_export_record(tmp_path / "film.mp4")
    assert rec.sampler_of(0, rec_defaults()).guidance_scale == 2.5
    rc, out, err = _cli(capsys, "generate", "--restore", "--from", str(tmp_path / "film.mp4"),
                        "--out", str(tmp_path / "restored.mp4"), "--model", "tiny-random", "--device", "cpu")
    assert rc == 0, err
    restored = Project(tmp_path / "restored_project")
    assert restored.read_settings()["sampler_settings"]["guidance_scale"] == 2.5  # one scale, as recorded
    assert restored.read_settings()["sampler_settings"]["shot_start_guidance_scale"] is None
    assert torch.equal(restored.load_history(), Project(tmp_path / "film_project").load_history())  # the same film
