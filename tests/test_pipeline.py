"""The storyboard pipeline on the tiny-random model, in memory: segments, seeds, sampler settings, stop, recall.
(What a run keeps on disk: tests/test_session.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pfp_app.sampling.pipeline import GenerationStopped
from pfp_app.film.storyboard import parse_storyboard

# tiny: 64x64 at 8 fps, at most 3 latent frames (1.5 s) per segment, cut at every shot -> segments at 0, 1 and 2.5 s
# (shot 0: latents 0-2, 8 film frames; shot 1: latents 3-8 in two segments of 12 frames).
STORYBOARD = "0s: a red fox in the snow\n1s: the fox runs across a frozen lake\nend: 4s\n"
STEPS = 2


def settings(pipe, **override):
    return replace(pipe.model.sampler, steps=STEPS, **override)


@pytest.fixture(scope="module")
def storyboard():
    return parse_storyboard(STORYBOARD)


@pytest.fixture(scope="module")
def generated(tiny_pipeline, storyboard):
    """The 3-segment storyboard, seed 0, in memory."""
    return tiny_pipeline.generate(storyboard, 0, settings(tiny_pipeline))


def test_schedule_of_the_test_storyboard(tiny_pipeline, storyboard):
    assert tiny_pipeline.segment_seconds == pytest.approx(1.5)
    segs = tiny_pipeline.schedule(storyboard)
    assert [(s.start, s.shot_index) for s in segs] == [(0.0, 0), (1.0, 1), (2.5, 1)]


def test_generate_makes_every_segment(tiny_pipeline, storyboard, generated):
    results = generated
    assert [r.segment.index for r in results] == [0, 1, 2]
    c, k = tiny_pipeline.model.codec.latent_channels, tiny_pipeline.model.video.segment_latent_frames
    for res in results:
        assert res.latents.shape == (1, c, k, 8, 8)
        assert res.segment.prompt == storyboard.shots[res.segment.shot_index].prompt
        assert res.seed == 0 and res.sampler.steps == STEPS
        # the causal VAE's first latent frame is 1 pixel frame, left out of the film: 4 (k - 1) frames, then 4 k
        assert res.frames.shape == (3, 4 * (k - 1) if res.segment.index == 0 else 4 * k, 64, 64)
        assert res.frames.min() >= -1.0 - 1e-4 and res.frames.max() <= 1.0 + 1e-4
    assert results[0].memory_tokens == 0  # nothing to remember yet
    assert 0 < results[1].memory_tokens < results[2].memory_tokens  # the memory grows with the history


def test_same_seed_reproduces_and_another_seed_differs(tiny_pipeline, storyboard, generated):
    again = tiny_pipeline.generate(storyboard, 0, settings(tiny_pipeline))
    other = tiny_pipeline.generate(storyboard, 1, settings(tiny_pipeline))
    for a, b, o in zip(generated, again, other):
        assert torch.equal(a.latents, b.latents)
        assert not torch.allclose(a.latents, o.latents)


def test_continuing_from_a_history_gives_what_one_run_gave(tiny_pipeline, storyboard, generated):
    """Segments 1.. from segment 0's latents (a fresh memory encoding) are the uninterrupted run's."""
    segments = tiny_pipeline.schedule(storyboard)
    s = settings(tiny_pipeline)
    rest = list(tiny_pipeline.generate_segments(segments, lambda k: 0, lambda k: s, start=1,
                                                history=generated[0].latents))
    for a, b in zip(rest, generated[1:]):
        assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="cannot continue from segment 2: the history holds 3 latent frames"):
        list(tiny_pipeline.generate_segments(segments, lambda k: 0, lambda k: s, start=2,
                                             history=generated[0].latents))


def test_decode_history_gives_exactly_the_frames_previewed_during_generation(tiny_pipeline, generated):
    results = generated
    with torch.no_grad():
        frames = tiny_pipeline.decode_history(torch.cat([r.latents for r in results], dim=2))
    torch.testing.assert_close(frames[:, 1:], torch.cat([r.frames for r in results], dim=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("override", [dict(sampler="euler"), dict(guidance_scale=3.0), dict(shift=1.0)])
def test_sampler_settings_reach_the_sampler(tiny_pipeline, storyboard, generated, override):
    results = generated
    custom = tiny_pipeline.generate(storyboard, 0, settings(tiny_pipeline, **override))
    assert len(custom) == 3
    assert not torch.allclose(custom[1].latents, results[1].latents)  # a different sampler, same seed


def test_shot_start_guidance_applies_to_each_shots_first_segment_only(tiny_pipeline, storyboard, monkeypatch):
    """Segments 0 and 1 start shots 0 and 1 and take the shot-start scales; segment 2 continues shot 1 with the
    model's scales. One guidance scale (the CLI's --guidance) is one scale everywhere."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen = []
    real_sample = pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, **kwargs):
        seen.append((s.guidance_scale, s.guidance_scale_2, s.boundary_ratio))
        return real_sample(model, shape, text, memory, positions, s, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    two_scales = settings(tiny_pipeline, guidance_scale=2.0, boundary_ratio=0.6, shot_start_guidance_scale=6.0,
                          shot_start_guidance_scale_2=1.0)
    tiny_pipeline.generate(storyboard, 0, two_scales)
    assert seen == [(6.0, 1.0, 0.6), (6.0, 1.0, 0.6), (2.0, None, 0.6)]
    seen.clear()
    tiny_pipeline.generate(storyboard, 0, two_scales.overridden(guidance=2.0))
    assert [g for g, _, _ in seen] == [2.0, 2.0, 2.0]  # one scale: the shot-start scale is not used
    seen.clear()
    monkeypatch.setattr(tiny_pipeline.model, "sampler", two_scales)
    tiny_pipeline.generate(storyboard)
    assert [g for g, _, _ in seen] == [6.0, 6.0, 2.0]  # by default, the model's settings


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
    results = tiny_pipeline.generate(storyboard, 0, settings(tiny_pipeline, context_latents=2))
    assert seen[0] is None and seen[1] is None
    history = torch.cat([r.latents for r in results[:2]], dim=2)
    torch.testing.assert_close(seen[2], history[:, :, -2:].to(seen[2].dtype))
    before = generated
    for i in (0, 1):
        torch.testing.assert_close(results[i].latents, before[i].latents)
    assert not torch.allclose(results[2].latents, before[2].latents)
    assert results[2].sampler.context_latents == 2


def test_stop_between_segments_and_during_one(tiny_pipeline, storyboard):
    done, steps = [], []
    with pytest.raises(GenerationStopped, match="before segment 1"):
        for res in tiny_pipeline.generate_segments(tiny_pipeline.schedule(storyboard), lambda k: 0,
                                                   lambda k: settings(tiny_pipeline), should_stop=lambda: len(done) >= 1):
            done.append(res)
    assert len(done) == 1
    with pytest.raises(GenerationStopped, match="during segment 1"):
        tiny_pipeline.generate(storyboard, 0, settings(tiny_pipeline), on_step=lambda *a: steps.append(a),
                               should_stop=lambda: len(steps) >= STEPS + 1)
    assert steps[0] == (0, 3, 1, STEPS)  # (segment, segments, step, steps)


def test_recall_reconstructs_a_past_frame_with_metrics(tiny_pipeline, generated):
    history = torch.cat([r.latents for r in generated], dim=2)  # (1, C, 9, 8, 8)
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
    history = torch.cat([r.latents for r in generated], dim=2)
    n_frames = 1 + 4 * (history.shape[2] - 1)
    with pytest.raises(ValueError, match=f"frame {n_frames} is outside the history \\({n_frames} frames\\)"):
        tiny_pipeline.recall(history, n_frames, steps=STEPS)


def test_recall_of_a_negative_frame_is_a_value_error(tiny_pipeline, generated):
    history = torch.cat([r.latents for r in generated], dim=2)
    with pytest.raises(ValueError, match="outside the history"):
        tiny_pipeline.recall(history, -1, steps=STEPS)


RETURNING = "0s: a red fox in the snow\n1s: a grey owl on a branch\n2s: A red fox in the snow.\nend: 3s\n"


def test_a_return_continues_the_opening_frames_of_the_shot_it_returns_to(tiny_pipeline, monkeypatch):
    """return_keyframes 1: the third shot repeats the first shot's prompt (whatever its case or full stop), so its
    first segment is denoised beside the first shot's first latent frame, placed just before it and pinned (the
    replacement method); the other segments are drawn exactly as without it."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen, real_sample = [], pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, context=None, **kwargs):
        seen.append((None if context is None else context.clone(), positions.clone(), s))
        return real_sample(model, shape, text, memory, positions, s, *args, context=context, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    keyed = tiny_pipeline.generate(RETURNING, 0, settings(tiny_pipeline, return_keyframes=1))
    plain = tiny_pipeline.generate(RETURNING, 0, settings(tiny_pipeline))
    assert [r.segment.shot_index for r in keyed] == [0, 1, 2]
    assert seen[0][0] is None and seen[1][0] is None
    context, positions, s = seen[2]
    # the fox shot's opening: its first latent that shows film frames (latent 0 holds the lead frame, not shown)
    torch.testing.assert_close(context, keyed[0].latents[:, :, 1:2].to(context.dtype))
    assert s.shot_start_guidance_scale == settings(tiny_pipeline).shot_start_guidance_scale  # still a shot start
    for i in (0, 1):
        torch.testing.assert_close(keyed[i].latents, plain[i].latents)
    assert not torch.allclose(keyed[2].latents, plain[2].latents)


def test_a_return_can_be_drawn_as_the_continuation_of_its_keyframes(tiny_pipeline, monkeypatch):
    """return_as_continuation: the return's first segment takes the within-shot settings (memory guidance, recent
    frames), the keyframe standing for the frame it continues."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen, real_sample = [], pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, **kwargs):
        seen.append((memory, positions.clone(), s))
        return real_sample(model, shape, text, memory, positions, s, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    s = settings(tiny_pipeline, return_keyframes=1, return_as_continuation=True, memory_guidance_scale=2.0,
                 recent_latents=1, shot_start_guidance_scale=6.0)
    tiny_pipeline.generate(RETURNING, 0, s)
    memory, positions, used = seen[2]
    assert used.memory_guidance_scale == 2.0 and used.recent_latents == 1  # a continuation's settings
    assert seen[1][2].memory_guidance_scale == 0.0  # a new shot stays a shot start
    recent = memory.coords[-4 * 4:]  # the keyframe as the frame it continues: 8x8 latents in 2x2 patches
    assert torch.all(recent[:, 0] == positions[0] - 1)


def test_a_return_can_be_a_retake_of_its_first_appearance_at_the_same_time_into_the_shot(tiny_pipeline, monkeypatch):
    """return_retake: each segment of the returning shot starts from the first appearance's latents that show the
    same film frames into the shot, noised to that level; other segments start from noise as before."""
    import pfp_app.sampling.pipeline as pipeline_module

    story = "0s: a red fox in the snow\n1.5s: a grey owl on a branch\n2.5s: a red fox in the snow\nend: 4s\n"
    seen, real_sample = [], pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, init=None, init_sigma=1.0, **kwargs):
        seen.append((None if init is None else init.clone(), init_sigma))
        return real_sample(model, shape, text, memory, positions, s, *args, init=init, init_sigma=init_sigma, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    res = tiny_pipeline.generate(story, 0, settings(tiny_pipeline, return_retake=0.6))
    segs = [r.segment for r in res]
    assert [s.shot_index for s in segs] == [0, 0, 1, 2]  # the fox shot: latents 0-3 in two segments
    assert all(init is None for init, _ in seen[:3])
    init, sigma = seen[3]
    history = torch.cat([r.latents for r in res[:3]], dim=2)
    # the return shows film frames 20.. of the film; its first 12 frames are the fox shot's film frames 0-11,
    # which latents 1-3 show (latent 0 is the lead frame)
    torch.testing.assert_close(init, history[:, :, 1:4].to(init.dtype))
    assert sigma == 0.6
    plain = tiny_pipeline.generate(story, 0, settings(tiny_pipeline))
    for i in (0, 1, 2):
        torch.testing.assert_close(res[i].latents, plain[i].latents)
    close = lambda a, b: float((a - b).abs().mean())  # noqa: E731
    assert close(res[3].latents, history[:, :, 1:4]) < close(plain[3].latents, history[:, :, 1:4])
