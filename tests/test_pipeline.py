"""The storyboard pipeline on the tiny-random model: projects, seeds, regeneration, stop, recall, export."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pfp_app.sampling.pipeline import GenerationSettings, GenerationStopped
from pfp_app.film.project import Project
from pfp_app.film.storyboard import format_storyboard, parse_storyboard
from pfp_app.io.video import read_mp4_comment, read_video, video_info

# tiny: 64x64 at 8 fps, at most 3 latent frames (1.5 s) per segment, cut at every shot -> segments at 0, 1 and 2.5 s
# (shot 0: latents 0-2, 8 film frames; shot 1: latents 3-8 in two segments of 12 frames).
STORYBOARD = "0s: a red fox in the snow\n1s: the fox runs across a frozen lake\nend: 4s\n"
STEPS = 2


def settings(seed=0):
    return GenerationSettings(seed=seed, steps=STEPS)


def latents_of(project: Project, index: int) -> torch.Tensor:
    return load_file(str(project.segment_latents_path(index)))["latents"]


@pytest.fixture(scope="module")
def storyboard():
    return parse_storyboard(STORYBOARD)


@pytest.fixture(scope="module")
def generated(tiny_pipeline, storyboard, tmp_path_factory):
    """One finished 3-segment project (seed 0). Tests that change a project work on a copy."""
    project = Project(tmp_path_factory.mktemp("generated") / "project")
    results = tiny_pipeline.generate(storyboard, settings(0), project)
    return project, results


def copy_project(project: Project, dest) -> Project:
    shutil.copytree(project.folder, dest)
    return Project(dest)


def test_schedule_of_the_test_storyboard(tiny_pipeline, storyboard):
    assert tiny_pipeline.segment_seconds == pytest.approx(1.5)
    segs = tiny_pipeline.schedule(storyboard)
    assert [(s.start, s.shot_index) for s in segs] == [(0.0, 0), (1.0, 1), (2.5, 1)]
    assert tiny_pipeline.first_segment_of_shot(storyboard, 1) == 1


def test_generate_writes_every_segment_to_the_project(tiny_pipeline, storyboard, generated):
    project, results = generated
    n = len(tiny_pipeline.schedule(storyboard))
    assert len(results) == n == project.finished_segments() == 3
    for i in range(n):
        assert project.segment_latents_path(i).is_file() and project.segment_video_path(i).is_file()
    assert not project.segment_latents_path(n).exists()
    assert sorted(p.name for p in project.segments_dir.iterdir()) == sorted(
        [f"seg_{i:03d}.safetensors" for i in range(n)] + [f"seg_{i:03d}.mp4" for i in range(n)])  # no temp files left
    assert parse_storyboard(project.read_storyboard()) == storyboard
    record = project.read_settings()
    assert record["seed"] == 0 and record["steps"] == STEPS and record["num_segments"] == n and record["trained"] is False

    c, k = tiny_pipeline.model.codec.latent_channels, tiny_pipeline.model.video.segment_latent_frames
    for i, res in enumerate(results):
        assert res.latents.shape == (1, c, k, 8, 8)
        assert torch.equal(latents_of(project, i), res.latents[0])
        assert res.segment.prompt == storyboard.shots[res.segment.shot_index].prompt
        # the causal VAE's first latent frame is 1 pixel frame, left out of the film: 4 (k - 1) frames, then 4 k
        assert res.frames.shape == (3, 4 * (k - 1) if i == 0 else 4 * k, 64, 64)
        assert res.frames.min() >= -1.0 - 1e-4 and res.frames.max() <= 1.0 + 1e-4
    assert results[0].memory_tokens == 0  # nothing to remember yet
    assert 0 < results[1].memory_tokens < results[2].memory_tokens  # the memory grows with the history
    history = project.load_history()
    assert history.shape == (1, c, 3 * k, 8, 8)


def test_same_seed_reproduces_and_another_seed_differs(tiny_pipeline, storyboard, generated, tmp_path):
    project, results = generated
    again = tiny_pipeline.generate(storyboard, settings(0), Project(tmp_path / "again"))
    other = tiny_pipeline.generate(storyboard, settings(1), Project(tmp_path / "other"))
    for a, b, o in zip(results, again, other):
        assert torch.equal(a.latents, b.latents)
        assert not torch.allclose(a.latents, o.latents)
    # and a project is not needed to generate
    assert torch.equal(tiny_pipeline.generate(storyboard, settings(0))[0].latents, results[0].latents)


def test_regenerate_shot_keeps_earlier_segments_and_rewrites_later_ones(tiny_pipeline, storyboard, generated, tmp_path):
    original, _ = generated
    project = copy_project(original, tmp_path / "project")
    seg0_bytes = project.segment_latents_path(0).read_bytes()
    before = [latents_of(project, i) for i in range(3)]

    changed = parse_storyboard(STORYBOARD.replace("the fox runs across a frozen lake", "the fox sleeps by a tree"))
    results = tiny_pipeline.regenerate_shot(project, changed, 1, settings(0))
    assert [r.segment.index for r in results] == [1, 2]
    assert project.finished_segments() == 3
    assert project.segment_latents_path(0).read_bytes() == seg0_bytes  # untouched, byte for byte
    for i in (1, 2):
        assert not torch.allclose(latents_of(project, i), before[i])  # new prompt -> new segments
        assert torch.equal(latents_of(project, i), results[i - 1].latents[0])
    assert parse_storyboard(project.read_storyboard()) == changed
    assert results[0].memory_tokens > 0  # the kept segment 0 is the history of the new segment 1


def test_regenerating_with_unchanged_settings_reproduces_the_project(tiny_pipeline, storyboard, generated, tmp_path):
    """Resuming from the latents on disk (fresh memory encoding) gives what one uninterrupted run gave."""
    original, _ = generated
    project = copy_project(original, tmp_path / "project")
    seg0_bytes = project.segment_latents_path(0).read_bytes()
    tiny_pipeline.regenerate_shot(project, storyboard, 1, settings(0))
    assert project.segment_latents_path(0).read_bytes() == seg0_bytes
    for i in range(3):  # (safetensors orders header metadata freely, so rewritten files are compared as tensors)
        assert torch.equal(latents_of(project, i), latents_of(original, i))


def test_decode_history_gives_exactly_the_frames_previewed_during_generation(tiny_pipeline, generated):
    project, results = generated
    with torch.no_grad():
        frames = tiny_pipeline.decode_history(project.load_history())
    torch.testing.assert_close(frames[:, 1:], torch.cat([r.frames for r in results], dim=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("override", [dict(sampler="euler"), dict(guidance_scale=3.0), dict(shift=1.0)])
def test_sampler_settings_reach_the_sampler(tiny_pipeline, storyboard, generated, override):
    _, results = generated
    custom = tiny_pipeline.generate(storyboard, GenerationSettings(seed=0, steps=STEPS, **override))
    assert len(custom) == 3
    assert not torch.allclose(custom[1].latents, results[1].latents)  # a different sampler, same seed


def test_shot_start_guidance_applies_to_each_shots_first_segment_only(tiny_pipeline, storyboard, monkeypatch):
    """Segments 0 and 1 start shots 0 and 1 and take the shot-start scales; segment 2 continues shot 1 with the
    model's scales. A guidance scale given alone (the CLI's --guidance, a one-scale export) is one scale everywhere."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen = []
    real_sample = pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, **kwargs):
        seen.append((s.guidance_scale, s.guidance_scale_2, s.boundary_ratio))
        return real_sample(model, shape, text, memory, positions, s, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    tiny_pipeline.generate(storyboard, GenerationSettings(seed=0, steps=STEPS, guidance_scale=2.0, boundary_ratio=0.6,
                                                          shot_start_guidance_scale=6.0, shot_start_guidance_scale_2=1.0))
    assert seen == [(6.0, 1.0, 0.6), (6.0, 1.0, 0.6), (2.0, None, 0.6)]
    seen.clear()
    monkeypatch.setattr(tiny_pipeline.model.video, "shot_start_guidance_scale", 6.0)
    tiny_pipeline.generate(storyboard, GenerationSettings(seed=0, steps=STEPS, guidance_scale=2.0))
    assert [g for g, _, _ in seen] == [2.0, 2.0, 2.0]  # given alone: the model's shot-start scale is not used
    seen.clear()
    tiny_pipeline.generate(storyboard, GenerationSettings(seed=0, steps=STEPS))
    assert [g for g, _, _ in seen] == [6.0, 6.0, tiny_pipeline.model.video.guidance_scale]  # the model's defaults


def test_context_latents_continue_the_history_within_a_shot_only(tiny_pipeline, storyboard, generated, monkeypatch):
    """Segment 2 continues shot 1 and gets the history's last latents as context; segments 0 and 1 start shots and
    get none (a cut is meant to change the picture), so they are the very segments of the run without context."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen = []
    real_sample = pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, context=None, **kwargs):
        seen.append(None if context is None else context.clone())
        return real_sample(model, shape, text, memory, positions, s, *args, context=context, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    results = tiny_pipeline.generate(storyboard, GenerationSettings(seed=0, steps=STEPS, context_latents=2))
    assert seen[0] is None and seen[1] is None
    history = torch.cat([r.latents for r in results[:2]], dim=2)
    torch.testing.assert_close(seen[2], history[:, :, -2:].to(seen[2].dtype))
    _, before = generated
    for i in (0, 1):
        torch.testing.assert_close(results[i].latents, before[i].latents)
    assert not torch.allclose(results[2].latents, before[2].latents)
    assert tiny_pipeline.settings_record(storyboard, GenerationSettings(context_latents=2))["sampler_settings"][
        "context_latents"] == 2


def test_stop_after_the_first_segment_keeps_it_on_disk(tiny_pipeline, storyboard, generated, tmp_path):
    project = Project(tmp_path / "stopped")
    done = []
    with pytest.raises(GenerationStopped):
        tiny_pipeline.generate(storyboard, settings(0), project, on_segment=done.append, should_stop=lambda: len(done) >= 1)
    assert len(done) == 1
    assert project.finished_segments() == 1
    assert project.segment_video_path(0).is_file() and not project.segment_video_path(1).exists()
    assert torch.equal(latents_of(project, 0), latents_of(generated[0], 0))
    # and it can be continued from there, to the same film
    rest = tiny_pipeline.generate(storyboard, settings(0), project, start_segment=1)
    assert [r.segment.index for r in rest] == [1, 2]
    assert torch.equal(project.load_history(), generated[0].load_history())


def test_stop_during_a_segment_discards_only_that_segment(tiny_pipeline, storyboard, tmp_path):
    project = Project(tmp_path / "stopped_mid")
    steps = []
    with pytest.raises(GenerationStopped, match="during segment 1"):
        tiny_pipeline.generate(storyboard, settings(0), project, on_step=lambda *a: steps.append(a),
                               should_stop=lambda: len(steps) >= STEPS + 1)
    assert project.finished_segments() == 1
    assert steps[0] == (0, 3, 1, STEPS)  # (segment, segments, step, steps)


def test_continuing_without_a_project_is_a_value_error(tiny_pipeline, storyboard):
    with pytest.raises(ValueError, match="cannot continue from segment 2: the project holds 0 finished segments"):
        tiny_pipeline.generate(storyboard, settings(0), None, start_segment=2)


def test_continuing_needs_the_earlier_segments(tiny_pipeline, storyboard, tmp_path):
    with pytest.raises(ValueError, match="cannot continue from segment 2: the project holds 0 finished segments"):
        tiny_pipeline.generate(storyboard, settings(0), Project(tmp_path / "empty"), start_segment=2)


def test_recall_reconstructs_a_past_frame_with_metrics(tiny_pipeline, generated):
    project, _ = generated
    history = project.load_history()  # (1, C, 9, 8, 8)
    truth = tiny_pipeline.decode_history(history)  # (3, 33, 64, 64)
    assert truth.shape == (3, 1 + 4 * (history.shape[2] - 1), 64, 64)
    for frame in (0, 13, truth.shape[1] - 1):
        res = tiny_pipeline.recall(history, frame, truth_frames=truth, steps=STEPS, seed=0)
        assert res.frame_index == frame
        assert res.recalled.shape == res.truth.shape == (3, 64, 64)
        assert torch.equal(res.truth, truth[:, frame])
        assert np.isfinite(res.psnr) and -1.0 <= res.ssim <= 1.0 and np.isfinite(res.baseline_psnr)
        assert res.memory_tokens > 0 and res.compression_ratio > 1
    again = tiny_pipeline.recall(history, 13, truth_frames=truth, steps=STEPS, seed=0)
    assert torch.equal(again.recalled, tiny_pipeline.recall(history, 13, steps=STEPS, seed=0).recalled)  # seeded
    without_truth = tiny_pipeline.recall(history, 13, steps=STEPS)
    assert without_truth.psnr is None and without_truth.truth is None


def test_recall_of_a_frame_after_the_history_is_a_value_error(tiny_pipeline, generated):
    history = generated[0].load_history()
    n_frames = 1 + 4 * (history.shape[2] - 1)
    with pytest.raises(ValueError, match=f"frame {n_frames} is outside the history \\({n_frames} frames\\)"):
        tiny_pipeline.recall(history, n_frames, steps=STEPS)


def test_recall_of_a_negative_frame_is_a_value_error(tiny_pipeline, generated):
    history = generated[0].load_history()
    with pytest.raises(ValueError, match="outside the history"):
        tiny_pipeline.recall(history, -1, steps=STEPS)


def test_export_writes_the_whole_film_with_the_storyboard_in_its_comment(tiny_pipeline, generated, tmp_path):
    project, results = generated
    out = tiny_pipeline.export(project, tmp_path / "film.mp4")
    frames, fps = read_video(out)
    assert len(frames) == sum(r.frames.shape[1] for r in results) == 8 + 12 + 12
    assert fps == pytest.approx(tiny_pipeline.model.video.fps)
    assert frames.shape[1:] == (64, 64, 3)
    comment = read_mp4_comment(out)
    assert format_storyboard(parse_storyboard(STORYBOARD)) in comment
    assert "seed=0" in comment
    # one shot on its own
    shot = tiny_pipeline.export(project, tmp_path / "shot1.mp4", segments=range(1, 3))
    assert video_info(shot).num_frames == 24


def test_export_of_an_empty_project_is_a_value_error(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match="nothing to export"):
        tiny_pipeline.export(Project(tmp_path / "empty"))
