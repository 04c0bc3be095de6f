"""A generation session on the tiny-random model: what a run keeps on disk, the one resume policy, takes, events,
and the export that restores the same film."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from pfp_app.film.export import parse_export_comment, read_export_record, write_film
from pfp_app.film.project import Project
from pfp_app.film.session import Done, Failed, GenerationSession, SegmentDone, Started, Step, Stopped
from pfp_app.film.storyboard import parse_storyboard
from pfp_app.io.video import read_mp4_comment, read_video, video_info

# tiny: at most 3 latent frames (1.5 s) per segment, cut at every shot -> segments at 0, 1 and 2.5 s
STORYBOARD = "0s: a red fox in the snow\n1s: the fox runs across a frozen lake\nend: 4s\n"
STEPS = 2


def sampler(pipe, **override):
    return replace(pipe.model.sampler, steps=STEPS, **override)


def run(pipe, project, text=STORYBOARD, seed=0, events=None, **plan_kw):
    session = GenerationSession(pipe, project)
    plan = session.plan(text, seed, sampler(pipe), **plan_kw)
    return plan, session.run(plan, (events if events is not None else []).append)


@pytest.fixture(scope="module")
def generated(tiny_pipeline, tmp_path_factory):
    """One finished 3-segment project (seed 0) and its events. Tests that change it work on a copy."""
    project = Project(tmp_path_factory.mktemp("generated") / "project")
    events = []
    plan, end = run(tiny_pipeline, project, events=events)
    return project, events, end


def copy(project: Project, dest) -> Project:
    shutil.copytree(project.folder, dest)
    return Project(dest)


def test_a_run_writes_every_segment_its_record_and_reports_typed_events(tiny_pipeline, generated):
    project, events, end = generated
    assert isinstance(end, Done) and (end.made, end.kept, end.num_segments) == (3, 0, 3)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Started" and kinds[-1] == "Done" and kinds.count("SegmentDone") == 3
    assert kinds.count("Step") == 3 * STEPS
    assert [e.segment for e in events if isinstance(e, SegmentDone)] == [0, 1, 2]
    assert project.finished_segments() == 3
    assert sorted(p.name for p in project.segments_dir.iterdir()) == sorted(
        f"seg_{i:03d}.{ext}" for i in range(3) for ext in ("safetensors", "mp4", "json"))  # no temp files left
    rec = project.read_segment_record(2)
    assert rec["prompt"] == "the fox runs across a frozen lake" and rec["seed"] == 0 and rec["shot_index"] == 1
    assert rec["sampler"] == sampler(tiny_pipeline).to_record() and rec["model"] == "tiny-random"
    settings = project.read_settings()
    assert settings["num_segments"] == 3 and settings["sampler_settings"]["steps"] == STEPS


def test_the_session_makes_what_the_pipeline_makes(tiny_pipeline, generated):
    project, _, _ = generated
    in_memory = tiny_pipeline.generate(STORYBOARD, 0, sampler(tiny_pipeline))
    assert torch.equal(project.load_history(), torch.cat([r.latents for r in in_memory], dim=2))


def test_running_again_keeps_everything_and_another_seed_keeps_a_take(tiny_pipeline, generated, tmp_path):
    project = copy(generated[0], tmp_path / "p")
    before = project.segment_latents_path(2).read_bytes()
    plan, end = run(tiny_pipeline, project)
    assert plan.keep == 3 and isinstance(end, Done) and end.made == 0
    assert project.segment_latents_path(2).read_bytes() == before
    events = []
    plan, end = run(tiny_pipeline, project, seed=5, events=events)
    assert plan.keep == 0 and end.made == 3
    take = events[0].take
    assert isinstance(events[0], Started) and take.name == "001"
    assert (take / "segments" / "seg_002.safetensors").read_bytes() == before  # nothing was lost


def test_an_edited_later_shot_keeps_the_earlier_one(tiny_pipeline, generated, tmp_path):
    project = copy(generated[0], tmp_path / "p")
    seg0 = project.segment_latents_path(0).read_bytes()
    plan, end = run(tiny_pipeline, project, text=STORYBOARD.replace("runs across a frozen lake", "sleeps by a tree"))
    assert plan.keep == 1 and end.made == 2
    assert project.segment_latents_path(0).read_bytes() == seg0


def test_regenerating_a_shot_keeps_earlier_segments_and_uses_its_own_seed(tiny_pipeline, generated, tmp_path):
    project = copy(generated[0], tmp_path / "p")
    seg0 = project.segment_latents_path(0).read_bytes()
    old = project.load_history()
    plan, end = run(tiny_pipeline, project, seed=7, from_shot=1)
    assert plan.keep == 1 and plan.seeds == [0, 7, 7] and end.made == 2
    assert project.segment_latents_path(0).read_bytes() == seg0
    assert not torch.allclose(project.load_history()[:, :, 3:], old[:, :, 3:])
    assert [project.read_segment_record(i)["seed"] for i in range(3)] == [0, 7, 7]
    # a plain run with the film's seed afterwards keeps the regenerated shot (it is not undone)
    assert run(tiny_pipeline, project)[0].keep == 3
    with pytest.raises(ValueError, match="shot 3 has no segment"):
        GenerationSession(tiny_pipeline, project).plan(STORYBOARD, 0, from_shot=2)


def test_regenerating_with_the_same_seed_reproduces_the_project(tiny_pipeline, generated, tmp_path):
    """Resuming from the latents on disk (a fresh memory encoding) gives what one uninterrupted run gave."""
    project = copy(generated[0], tmp_path / "p")
    run(tiny_pipeline, project, from_shot=1)
    assert torch.equal(project.load_history(), generated[0].load_history())


def test_stop_keeps_finished_segments_and_the_next_run_resumes(tiny_pipeline, generated, tmp_path):
    project = Project(tmp_path / "stopped")
    events = []
    session = GenerationSession(tiny_pipeline, project)
    end = session.run(session.plan(STORYBOARD, 0, sampler(tiny_pipeline)), events.append,
                      should_stop=lambda: any(isinstance(e, SegmentDone) for e in events))
    assert isinstance(end, Stopped) and end.kept == 1 == project.finished_segments()
    assert not project.segment_video_path(1).exists()
    plan, end = run(tiny_pipeline, project)
    assert plan.keep == 1 and end.made == 2
    assert torch.equal(project.load_history(), generated[0].load_history())


def test_a_failure_is_an_event_with_its_error_and_finished_segments_stay(tiny_pipeline, tmp_path, monkeypatch):
    project = Project(tmp_path / "failing")
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    import pfp_app.sampling.pipeline as pipeline_module

    real = pipeline_module.sample
    monkeypatch.setattr(pipeline_module, "sample", fail_second)
    _, end = run(tiny_pipeline, project)
    assert isinstance(end, Failed) and end.out_of_memory and end.kept == 1 == project.finished_segments()


def test_export_restores_the_same_film_with_its_footage_runs_and_settings(tiny_pipeline, generated, tmp_path):
    project = copy(generated[0], tmp_path / "p")
    run(tiny_pipeline, project, seed=7, from_shot=1)  # two runs: seed 0, then 7 from segment 1
    film = write_film(project, tmp_path / "film.mp4")
    frames, fps = read_video(film)
    assert len(frames) == 8 + 12 + 12 and fps == pytest.approx(8)
    record = read_export_record(film)
    assert [(r.start, r.seed) for r in record.runs] == [(0, 0), (1, 7)]
    assert record.sampler_of(2, tiny_pipeline.model.sampler) == sampler(tiny_pipeline)
    assert parse_storyboard(record.storyboard) == parse_storyboard(STORYBOARD)
    restored = Project(tmp_path / "restored")
    session = GenerationSession(tiny_pipeline, restored)
    end = session.run(session.plan_restore(record))
    assert isinstance(end, Done) and torch.equal(restored.load_history(), project.load_history())
    # a shot on its own, at another frame rate (duration kept)
    shot = write_film(project, tmp_path / "shot.mp4", segments=range(1, 3), fps=16)
    assert video_info(shot).num_frames == 48
    with pytest.raises(ValueError, match="nothing to export"):
        write_film(Project(tmp_path / "empty"))


def test_records_written_before_still_restore(tiny_pipeline):
    """Key=value records: the CLI's named its sampler fields (the rest was off), the studio's only steps (it sampled
    with the model's defaults)."""
    model = tiny_pipeline.model.sampler
    cli = parse_export_comment("PFP Studio | model=default seed=1 steps=8 guidance=3 start_guidance=6 "
                               "start_guidance2=1 boundary=0.6 memory_guidance=2 recent=1\n0s: a", "c.mp4")
    s = cli.sampler_of(0, model)
    assert (s.steps, s.guidance_scale, s.shot_start_guidance_scale, s.boundary_ratio) == (8, 3.0, 6.0, 0.6)
    assert (s.memory_guidance_scale, s.recent_latents, s.context_latents) == (2.0, 1, 0)
    one = parse_export_comment("PFP Studio | model=default seed=1 steps=8 guidance=3\n0s: a", "g.mp4")
    s1 = one.sampler_of(0, replace(model, shot_start_guidance_scale=6.0, memory_guidance_scale=2.0))
    assert s1.shot_start_guidance_scale is None and s1.memory_guidance_scale == 0.0  # one scale, nothing else
    studio = parse_export_comment("PFP Studio | model=default seeds=0:3,1:3,2:7 steps=16 memory_rate=4x4x2\n0s: a",
                                  "s.mp4")
    assert [(r.start, r.seed) for r in studio.runs] == [(0, 3), (2, 7)] and studio.seed_of(1) == 3
    defaults = replace(model, memory_guidance_scale=2.0, recent_latents=1)
    assert studio.sampler_of(2, defaults) == replace(defaults, steps=16)  # the model's defaults, its steps
    assert parse_export_comment("Lavf58 encoder", "x.mp4") is None
    for bad in ("PFP Studio | seed=x\n0s: a", "PFP Studio | seed=1 guidance=6 guidance2=1\n0s: a",
                "PFP Studio | seed=1 guidance=3 recent=-1\n0s: a", 'PFP Studio | {"runs": []}\n0s: a',
                'PFP Studio | {"runs": [{"start": 0, "seed": 1, "sampler": {"nope": 1}}]}\n0s: a'):
        with pytest.raises(ValueError, match="cannot be read"):
            parse_export_comment(bad, "bad.mp4")


def test_the_export_comment_is_json_with_every_sampler_field(tiny_pipeline, generated, tmp_path):
    film = write_film(generated[0], tmp_path / "f.mp4")
    head = read_mp4_comment(film).split("\n", 1)[0]
    record = json.loads(head.split("|", 1)[1])
    assert record["format"] == 2 and record["runs"][0]["sampler"] == sampler(tiny_pipeline).to_record()


def test_a_shots_export_records_every_run_and_restores_the_whole_film(tiny_pipeline, generated, tmp_path):
    project = copy(generated[0], tmp_path / "p")
    run(tiny_pipeline, project, seed=7, from_shot=1)
    shot = read_export_record(write_film(project, tmp_path / "shot.mp4", segments=range(1, 3), with_footage=False))
    assert [(r.start, r.seed) for r in shot.runs] == [(0, 0), (1, 7)] and shot.seed_of(0) == 0


def test_sampler_settings_are_checked_where_they_are_made():
    from pfp_app.sampling.settings import SamplerSettings

    for bad, message in ((dict(steps=0), "steps must be a whole number ≥ 1"), (dict(sampler="ddim"), "unipc or euler"),
                         (dict(return_retake=1.5), "return_retake must be from 0 to 1"),
                         (dict(recent_latents=-1), "recent_latents must be a whole number ≥ 0"),
                         (dict(guidance_scale=float("nan")), "guidance_scale must be a number ≥ 0")):
        with pytest.raises(ValueError, match=message):
            SamplerSettings(**bad)
    with pytest.raises(ValueError, match="cannot be read"):  # an export's record is checked when it is read
        parse_export_comment('PFP Studio | {"runs": [{"start": 0, "seed": 1, "sampler": {"steps": "abc"}}]}\n0s: a', "x.mp4")
