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
from pfp_app.film.export import guidance_comment, parse_export_comment, read_export_record
from pfp_app.film.footage import FootageError, check_footage, prepare_footage, save_footage
from pfp_app.model.causal_decode import WARMUP_LATENTS
from pfp_app.sampling.pipeline import GenerationSettings
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
    tiny_pipeline.generate("0s: a\nend: 1s", GenerationSettings(steps=1), project)
    with pytest.raises(FootageError, match="already holds 1 generated segment.*nothing was changed"):
        save_footage(project, prepare_footage(tiny_pipeline, _video(tmp_path / "in.mp4")))
    assert not fm.has_footage(project)


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
    res = tiny_pipeline.generate(STORY, GenerationSettings(steps=1), project)
    bare = tiny_pipeline.generate(STORY, GenerationSettings(steps=1))
    assert res[0].memory_tokens > 0 and bare[0].memory_tokens == 0
    other = tiny_pipeline.generate(STORY, GenerationSettings(steps=1), footage=torch.zeros_like(f.latents))
    assert not torch.allclose(res[0].latents, other[0].latents)  # the footage's memory changes what is drawn
    assert sum(x.frames.shape[1] for x in res) == sum(x.frames.shape[1] for x in bare) == 24  # 3 s either way
    explicit = tiny_pipeline.generate(STORY, GenerationSettings(steps=1), footage=f.latents)
    assert torch.equal(explicit[0].latents, res[0].latents)  # the project's footage is used by default
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
    again = tiny_pipeline.regenerate_shot(project, __import__("pfp_app.film.storyboard", fromlist=["x"]).parse_storyboard(STORY),
                                          1, GenerationSettings(seed=5, steps=1))
    assert again[0].segment.index == 1 and again[0].memory_tokens == res[1].memory_tokens
    assert torch.equal(project.load_history(1), seg0) and fm.has_footage(project)

    # export: with the footage (default) or the generated part only, said in the comment
    film = tiny_pipeline.export(project)
    gen_only = tiny_pipeline.export(project, tmp_path / "gen.mp4", with_footage=False)
    assert len(read_video(film)[0]) == f.num_frames + len(read_video(gen_only)[0]) == frames.shape[1]
    assert f"footage_frames={f.num_frames}" in read_mp4_comment(film)
    assert "footage=excluded" in read_mp4_comment(gen_only)


# ---- re-opening an export ------------------------------------------------------------------------------

def test_export_comment_parses_back_to_storyboard_seeds_and_steps():
    rec = parse_export_comment("PFP Studio | model=default seeds=0:3,1:3,2:7 steps=16 memory_rate=4x4x2 "
                               "footage_frames=33\n0s: a\nend: 2s\n", "film.mp4")
    assert rec.storyboard == "0s: a\nend: 2s\n" and rec.steps == 16 and rec.footage_frames == 33
    assert [rec.seed_of(k) for k in range(4)] == [3, 3, 7, 7] and rec.seed == 3
    assert rec.guidance is None  # exports made before guidance was recorded: the model's default
    assert parse_export_comment("PFP Studio | model=default seed=1 steps=8 guidance=3\n0s: a", "g.mp4").guidance == 3.0
    assert parse_export_comment("Lavf58 encoder", "x.mp4") is None
    with pytest.raises(ValueError, match="'bad.mp4' has a PFP Studio comment that cannot be read"):
        parse_export_comment("PFP Studio | seed=x\n0s: a", "bad.mp4")


def test_export_records_two_scale_guidance_and_a_one_scale_record_stays_one_scale():
    """Restoring regenerates with the recorded sampler: two scales where recorded, else one scale throughout
    (guidance_scale_2 = guidance), even when the model's default has two."""
    rec = parse_export_comment("PFP Studio | model=default seed=1 steps=8 guidance=6 guidance2=1 boundary=0.6\n0s: a", "g.mp4")
    s = rec.generation_settings(4)
    assert (s.seed, s.steps, s.guidance_scale, s.guidance_scale_2, s.boundary_ratio) == (4, 8, 6.0, 1.0, 0.6)
    assert "guidance 6 (then 1 below timestep ratio 0.6)" in rec.describe()
    starts = parse_export_comment("PFP Studio | seed=1 guidance=3 start_guidance=6 start_guidance2=1 boundary=0.6\n0s: a",
                                  "s.mp4")
    s = starts.generation_settings(1)
    assert (s.guidance_scale, s.shot_start_guidance_scale, s.shot_start_guidance_scale_2) == (3.0, 6.0, 1.0)
    assert "guidance 3 (6 on a shot's first segment, then 1 below 0.6)" in starts.describe()
    old = parse_export_comment("PFP Studio | model=default seed=1 steps=8 guidance=3\n0s: a", "g.mp4").generation_settings(1)
    assert old.guidance_scale == 3.0 and old.guidance_scale_2 is old.shot_start_guidance_scale is None  # 3 alone
    with pytest.raises(ValueError, match="cannot be read"):
        parse_export_comment("PFP Studio | seed=1 guidance=6 guidance2=1\n0s: a", "half.mp4")
    assert old.context_latents == 0  # exports from before context latents were recorded used none
    ctx = parse_export_comment("PFP Studio | seed=1 guidance=3 context=1\n0s: a", "c.mp4")
    assert ctx.generation_settings(1).context_latents == 1 and "1 context latent(s) within a shot" in ctx.describe()
    assert guidance_comment({"guidance_scale": 3.0, "context_latents": 1}) == " guidance=3 context=1"
    mg = parse_export_comment("PFP Studio | seed=1 guidance=3" + guidance_comment({"memory_guidance_scale": 2.0})
                              + "\n0s: a", "m.mp4")
    assert mg.generation_settings(1).memory_guidance_scale == 2.0 and "memory guidance 2 within a shot" in mg.describe()
    assert old.memory_guidance_scale == 0.0
    recent = parse_export_comment("PFP Studio | seed=1 guidance=3" + guidance_comment({"recent_latents": 1}) + "\n0s: a",
                                  "r.mp4")
    assert recent.generation_settings(1).recent_latents == 1 and "1 recent latent(s)" in recent.describe()
    assert old.recent_latents == 0  # exports made before v7 generated without recent frames
    with pytest.raises(ValueError, match="cannot be read"):
        parse_export_comment("PFP Studio | seed=1 context=x\n0s: a", "bad.mp4")
    with pytest.raises(ValueError, match="cannot be read"):
        parse_export_comment("PFP Studio | seed=1 recent=-1\n0s: a", "bad.mp4")


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
    rc, out, err = _cli(capsys, *again, "--from", str(_video(tmp_path / "other.mp4", seed=1)))
    assert rc == 2 and "holds another storyboard or other settings" in err
    assert fm.footage_meta(first)["source"] == "clip.mp4"  # nothing overwritten

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
    assert second.read_settings()["seed"] == 4 and second.read_settings()["steps"] == 1
    assert fm.load_footage_latents(second).shape == fm.load_footage_latents(first).shape
    assert len(read_video(tmp_path / "restored.mp4")[0]) == len(read_video(tmp_path / "film.mp4")[0])

    rc, out, err = _cli(capsys, "generate", "--restore", "--from", str(src), "--out", str(tmp_path / "y.mp4"), *base)
    assert rc == 2 and "'clip.mp4' was not exported by PFP Studio" in err


def test_cli_bad_footage_fails_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "story.txt").write_text(STORY)
    (tmp_path / "empty").mkdir()
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--from",
                        str(tmp_path / "empty"), "--out", str(tmp_path / "o.mp4"), "--model", "tiny-random")
    assert rc == 2 and err.strip() == "error: folder 'empty' holds no images (.png, .jpg, .jpeg, .webp, .bmp)"
    assert not (tmp_path / "o_project").exists()


def test_cli_guidance_is_used_recorded_in_the_export_and_restored(tmp_path, capsys):
    """--guidance overrides the model's; the export's comment records it and --restore generates with it."""
    (tmp_path / "story.txt").write_text(STORY)
    base = ["--model", "tiny-random", "--steps", "1", "--device", "cpu"]
    rc, out, err = _cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--guidance", "2.5",
                        "--out", str(tmp_path / "film.mp4"), *base)
    assert rc == 0, err
    assert Project(tmp_path / "film_project").read_settings()["sampler_settings"]["guidance_scale"] == 2.5
    rec = read_export_record(tmp_path / "film.mp4")
    assert rec.guidance == 2.5 and "guidance 2.5" in rec.describe()
    rc, out, err = _cli(capsys, "generate", "--restore", "--from", str(tmp_path / "film.mp4"),
                        "--out", str(tmp_path / "restored.mp4"), "--model", "tiny-random", "--device", "cpu")
    assert rc == 0, err
    restored = Project(tmp_path / "restored_project").read_settings()["sampler_settings"]
    assert restored["guidance_scale"] == 2.5 and restored["shot_start_guidance_scale"] is None  # one scale, as recorded
