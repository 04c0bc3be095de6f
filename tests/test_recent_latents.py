"""Recent latents: within a shot, G sees the history's last latent frames at full resolution beside φ's memory.

The frame a segment continues is held only blurred by the 4x4x2 memory, and v6's joins inside a shot jumped
(seam 1.5-2.0 against the ground truth's 1.0). These tests show that the recent tokens are exactly the clean
frames G would see in its own sequence at timestep 0, that the app gives them within a shot only, and that the
trainer trains them where the app uses them.
"""

from __future__ import annotations

from dataclasses import replace

import json

import pytest
import torch

from pfp_app.model.memory_dit import (
    MemoryTokens,
    history_recent_tokens,
    join_memory,
    memory_dit_forward,
    recent_tokens,
)
from pfp_app.model.bundle import build_random_model
from pfp_app.film.storyboard import parse_storyboard
from pfp_app.train.data import LatentClips, ShotAlignedStarts
from pfp_app.train.memory_loop import _memory_step
from pfp_app.train.trainer import TrainConfig, train

# tiny: 64x64 at 8 fps, 3 latent frames per segment; shot 1 runs over two segments (see test_pipeline.py)
STORYBOARD = "0s: a red fox in the snow\n1s: the fox runs across a frozen lake\nend: 4s\n"


def _s(pipe, **override):
    """The model's sampler settings with `override`."""
    return replace(pipe.model.sampler, **override)


def test_recent_tokens_are_the_frame_g_would_see_clean_in_its_own_sequence():
    """Denoising a segment with the last history frame as recent tokens gives, for the segment, exactly what G
    gives when that frame is a clean (timestep 0) frame of its own sequence: the same tokens, positions and
    modulation, so G reads the frame as it reads its own frames."""
    torch.manual_seed(0)
    g = build_random_model("tiny", seed=0).transformer.eval()
    last = torch.randn(1, 8, 1, 8, 8)  # the history's last latent frame, at time 4
    segment = torch.randn(1, 8, 3, 8, 8)  # times 5, 6, 7
    text = torch.randn(1, 4, g.config.text_dim)
    t0 = torch.zeros(1)
    with torch.no_grad():
        as_memory = memory_dit_forward(g, segment, t0, text, recent_tokens(g, last, torch.tensor([4.0])),
                                       torch.tensor([5.0, 6.0, 7.0]))
        in_sequence = memory_dit_forward(g, torch.cat([last, segment], dim=2), t0, text, None,
                                         torch.tensor([4.0, 5.0, 6.0, 7.0]))
    torch.testing.assert_close(as_memory, in_sequence[:, :, 1:], atol=1e-5, rtol=1e-5)
    # and it is not a no-op: G's output changes with the frame it is shown
    with torch.no_grad():
        other = memory_dit_forward(g, segment, t0, text, recent_tokens(g, -last, torch.tensor([4.0])),
                                   torch.tensor([5.0, 6.0, 7.0]))
    assert (other - as_memory).abs().mean() > 1e-3


def test_join_memory_keeps_phi_tokens_first_and_skips_what_is_missing():
    a = MemoryTokens(torch.ones(2, 3, 4), torch.zeros(3, 3))
    b = MemoryTokens(torch.zeros(2, 5, 4), torch.ones(5, 3))
    joined = join_memory(a, None, b)
    assert joined.num_tokens == 8 and torch.equal(joined.tokens[:, :3], a.tokens) and torch.equal(joined.coords[3:], b.coords)
    assert join_memory(None, b) is b and join_memory(None, None) is None
    with pytest.raises(ValueError, match="frame_positions must have 1 entries"):
        recent_tokens(build_random_model("tiny", seed=0).transformer, torch.zeros(1, 8, 1, 8, 8), torch.tensor([1.0, 2.0]))


class ZeroText:
    """A text encoder stand-in for the trainer's batches: every caption is (2, dim) zeros."""

    def __init__(self, dim: int = 3):
        self.dim = dim

    def encode(self, ps):
        return torch.zeros(len(ps), 2, self.dim)

    def null(self, b):
        return torch.zeros(b, 2, self.dim)


def spy_on_sampler(monkeypatch) -> list:
    """From here on, every segment the pipeline samples appends (memory, frame positions) to the returned list."""
    import pfp_app.sampling.pipeline as pipeline_module

    seen, real_sample = [], pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, **kwargs):
        seen.append((memory, positions.clone()))
        return real_sample(model, shape, text, memory, positions, s, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    return seen


def test_the_app_gives_recent_frames_within_a_shot_only(tiny_pipeline, monkeypatch):
    """Segments 0 and 1 start shots: φ's memory alone (none for the first). Segment 2 continues shot 1 and also
    gets the history's last latent frame as 8x8 full-resolution tokens at its own time."""
    seen = spy_on_sampler(monkeypatch)
    sb = parse_storyboard(STORYBOARD)
    results = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2, recent_latents=1))
    without = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2))
    phi_tokens = [None if m is None else m.num_tokens for m, _ in seen[3:]]  # the run without recent frames
    assert seen[0][0] is None and seen[1][0].num_tokens == phi_tokens[1]
    memory, positions = seen[2]
    assert memory.num_tokens == phi_tokens[2] + 4 * 4  # tiny: 8x8 latents, patch 2x2
    recent = memory.coords[phi_tokens[2]:]
    assert torch.all(recent[:, 0] == positions[0] - 1) and recent[:, 1].max() == 3 and recent[:, 2].max() == 3
    history = torch.cat([r.latents for r in results[:2]], dim=2)
    g = tiny_pipeline.model.transformer
    expected = recent_tokens(g, history[:, :, -1:].to(g.dtype), positions[:1] - 1).tokens
    torch.testing.assert_close(memory.tokens[:, phi_tokens[2]:], expected.to(memory.tokens.dtype))
    for i in (0, 1):  # shot starts are drawn exactly as without recent frames
        torch.testing.assert_close(results[i].latents, without[i].latents)
    assert not torch.allclose(results[2].latents, without[2].latents)


RETURNING = "0s: a red fox in the snow\n1s: a grey owl on a branch\n2s: a red fox in the snow\nend: 3s\n"


def test_history_recent_tokens_take_the_frames_before_an_end_at_their_own_times():
    g = build_random_model("tiny", seed=0).transformer.eval()
    history = torch.randn(1, 8, 6, 8, 8)
    with torch.no_grad():
        last = history_recent_tokens(g, history, 1)
        at_3 = history_recent_tokens(g, history, 2, end=3)
        ref = recent_tokens(g, history[:, :, 1:3], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(at_3.tokens, ref.tokens)
    assert torch.equal(at_3.coords, ref.coords) and set(at_3.coords[:, 0].tolist()) == {1.0, 2.0}
    assert set(last.coords[:, 0].tolist()) == {5.0}
    assert history_recent_tokens(g, history, 1, end=0) is None


def test_a_shot_that_repeats_an_earlier_prompt_gets_that_shots_last_frame(tiny_pipeline, monkeypatch):
    """return_latents: the third shot repeats the first shot's prompt, so its first segment also gets the first
    shot's last latent frame, at that frame's own time; the second shot (a new prompt) gets nothing extra, and
    with return_latents 0 the film is exactly as before."""
    seen = spy_on_sampler(monkeypatch)
    sb = parse_storyboard(RETURNING)
    results = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2, return_latents=1))
    n = len(results)
    without = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2))
    assert [r.segment.shot_index for r in results] == [0, 1, 2]  # one segment per shot (tiny: 1 s segments)
    phi = [None if m is None else m.num_tokens for m, _ in seen[n:]]
    assert seen[1][0].num_tokens == phi[1]  # a new prompt: φ's memory alone
    memory, _ = seen[2]
    assert memory.num_tokens == phi[2] + 4 * 4  # the fox shot's last latent frame, 8x8 latents in 2x2 patches
    end = results[0].latents.shape[2]  # the fox shot ends here
    assert torch.all(memory.coords[phi[2]:, 0] == end - 1)
    g = tiny_pipeline.model.transformer
    expected = recent_tokens(g, results[0].latents[:, :, -1:].to(g.dtype), torch.tensor([end - 1.0])).tokens
    torch.testing.assert_close(memory.tokens[:, phi[2]:], expected.to(memory.tokens.dtype))
    for i in (0, 1):
        torch.testing.assert_close(results[i].latents, without[i].latents)
    assert not torch.allclose(results[2].latents, without[2].latents)


def test_a_return_can_get_the_frames_its_earlier_shot_began_with(tiny_pipeline, monkeypatch):
    """return_latents_from="start": the returning shot gets the first latent frame of the shot it returns to, at
    that frame's time, instead of the last."""
    seen = spy_on_sampler(monkeypatch)
    sb = parse_storyboard(RETURNING)
    results = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2, return_latents=1,
                                                            return_latents_from="start"))
    memory, _ = seen[2]
    phi = memory.num_tokens - 4 * 4
    assert torch.all(memory.coords[phi:, 0] == 0)  # the fox shot began at latent 0
    g = tiny_pipeline.model.transformer
    expected = recent_tokens(g, results[0].latents[:, :, :1].to(g.dtype), torch.tensor([0.0])).tokens
    torch.testing.assert_close(memory.tokens[:, phi:], expected.to(memory.tokens.dtype))
    # as_recent: the same frame, placed just before the returning segment (where a continued shot's frame sits)
    seen.clear()
    again = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2, return_latents=1,
                                                          return_latents_from="start", return_latents_as_recent=True))
    memory, positions = seen[2]
    assert torch.all(memory.coords[phi:, 0] == positions[0] - 1)
    torch.testing.assert_close(memory.tokens[:, phi:], expected.to(memory.tokens.dtype))
    torch.testing.assert_close(again[1].latents, results[1].latents)


def test_memory_guidance_at_a_return_applies_to_the_returning_shots_first_segment_only(tiny_pipeline, monkeypatch):
    """return_memory_guidance_scale: the third shot repeats the first shot's prompt, so its first segment is
    sampled with that memory guidance; the second shot (a new prompt, also a shot start) gets none, so the first
    two segments are exactly as without it and the third is not. SamplerSettings says the same per segment."""
    import pfp_app.sampling.pipeline as pipeline_module

    scales, real_sample = [], pipeline_module.sample

    def spy(model, shape, text, memory, positions, s, *args, **kwargs):
        scales.append(s.memory_guidance_scale)
        return real_sample(model, shape, text, memory, positions, s, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample", spy)
    sb = parse_storyboard(RETURNING)
    guided = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2, return_memory_guidance_scale=3.0))
    plain = tiny_pipeline.generate(sb, 0, _s(tiny_pipeline, steps=2))
    assert scales == [0.0, 0.0, 3.0] + [0.0, 0.0, 0.0]
    for i in (0, 1):
        torch.testing.assert_close(guided[i].latents, plain[i].latents)
    assert not torch.allclose(guided[2].latents, plain[2].latents)

    from pfp_app.sampling.flow import SamplerSettings

    s = SamplerSettings(memory_guidance_scale=2.0, return_memory_guidance_scale=1.5)
    assert s.for_segment(False).memory_guidance_scale == 2.0  # within a shot: the within-shot scale
    assert s.for_segment(True).memory_guidance_scale == 0.0  # a new shot: none
    assert s.for_segment(True, returning=True).memory_guidance_scale == 1.5
    with pytest.raises(ValueError, match="return_latents_from must be 'end' or 'start', not 'middle'"):
        SamplerSettings(return_latents_from="middle")


def test_the_trainer_gives_recent_frames_to_segments_inside_a_shot_only():
    prompts = [["a"] * 4 + ["b"] * 8 for _ in range(6)]  # one cut at latent 4 in every clip
    clips = LatentClips(torch.randn(6, 4, 12, 2, 2), prompts)
    seen = []

    def module(objective, latents, text, t, noise, omega=None, split=None, segment_frames=None, recent=0,
               reference=None):
        first = int(omega[0]) if objective == "retrieval" else split  # the first denoised frame's position
        seen.append((first, objective == "retrieval" or split > 0, recent))  # (.., a history is given, ..)
        return torch.zeros(())

    cfg = TrainConfig(stage="finetune", batch_size=2, retrieval_share=0.0, caption_dropout=0.0, recent_latents=1)
    starts = ShotAlignedStarts(prompts, 3, cut_share=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        _memory_step(module, clips, ZeroText(), cfg, gen, "cpu", 3, clips, None, starts)
    at_cut = [r for s, h, r in seen if s in (0, 4)]
    inside = [r for s, h, r in seen if s not in (0, 4)]
    assert at_cut and inside and set(at_cut) == {0} and set(inside) == {1}
    seen.clear()
    retrieval = TrainConfig(stage="finetune", batch_size=2, retrieval_share=1.0, recent_latents=1, num_query=2)
    _memory_step(module, clips, ZeroText(), retrieval, gen, "cpu", 3, clips, None, starts)
    assert seen[0][2] == 0  # recall is φ's alone


def test_a_model_trained_with_recent_frames_generates_with_them(tmp_path):
    out = tmp_path / "ft"
    train(TrainConfig(stage="finetune", init="tiny", out=str(out), num_clips=4, clip_seconds=3.0, batch_size=2,
                      workers=0, max_steps=2, recent_latents=1, retrieval_share=0.0, log_every=1))
    assert json.loads((out / "model" / "pfp_model.json").read_text())["sampler"]["recent_latents"] == 1
    with pytest.raises(ValueError, match="--recent-latents must be >= 0, and needs --segment-starts shots"):
        train(TrainConfig(stage="finetune", init="tiny", out=str(tmp_path / "u"), recent_latents=1,
                          segment_starts="uniform"))


# ---- a return given the frames the shot it repeats began with (train --repeat-share --return-frames) --------------

def test_repeated_shot_start_finds_the_latest_earlier_shot_with_the_same_prompt():
    from pfp_app.train.data import repeated_shot_start

    p = ["a"] * 3 + ["b"] * 2 + ["a"] * 2 + ["c"] * 2 + ["a"] * 2
    assert repeated_shot_start(p, 5) == 0  # the second "a" shot repeats the first, which began at 0
    assert repeated_shot_start(p, 9) == 5  # the third repeats the latest earlier one, which began at 5
    assert repeated_shot_start(p, 3) is None  # "b" is new
    assert repeated_shot_start(p, 6) is None  # not a shot start
    assert repeated_shot_start(p, 0) is None


def test_repeat_batches_are_returns_and_the_trainer_gives_them_the_repeated_shots_opening():
    """With repeat_share 1, every shot-start batch is a shot that repeats an earlier prompt, and G gets the first
    latent of the repeated shot (from the clip, per sample) placed just before the segment; other batches get none."""
    prompts = [["a"] * 4 + ["b"] * 4 + ["a"] * 4, ["b"] * 2 + ["c"] * 2 + ["d"] * 4 + ["c"] * 4]  # repeats at 8
    clips = LatentClips(torch.randn(2, 4, 12, 2, 2), prompts)
    starts = ShotAlignedStarts(prompts, 3, cut_share=1.0, repeat_share=1.0)
    assert starts.at_repeat.keys() == {8} and starts.openings(8, torch.tensor([0, 1, 1])).tolist() == [0, 2, 2]
    seen = []

    def module(objective, latents, text, t, noise, omega=None, split=None, segment_frames=None, recent=0,
               reference=None):
        seen.append((split, reference))
        return torch.zeros(())

    cfg = TrainConfig(stage="finetune", batch_size=3, retrieval_share=0.0, caption_dropout=0.0, repeat_share=1.0,
                      return_frames=1)
    gen = torch.Generator().manual_seed(0)
    idx_seen = []
    real_draw = starts.draw_kind

    def draw_kind(batch, g):
        s, idx, kind = real_draw(batch, g)
        idx_seen.append(idx)
        return s, idx, kind

    starts.draw_kind = draw_kind
    for _ in range(5):
        _memory_step(module, clips, ZeroText(), cfg, gen, "cpu", 3, clips, None, starts)
    for (s, ref), idx in zip(seen, idx_seen):
        assert s == 8 and ref.shape == (3, 4, 1, 2, 2)
        opening = torch.tensor([0, 2])[idx]  # clip 0's repeated shot began at latent 0, clip 1's at 2
        torch.testing.assert_close(ref, torch.stack([clips.latents[i, :, o : o + 1] for i, o in zip(idx, opening)]))
    # without repeat batches (and at repeat_share 0.5 on the "inside" batches) no reference is given
    seen.clear()
    mixed = ShotAlignedStarts(prompts, 3, cut_share=0.5, repeat_share=0.5)
    plain = TrainConfig(stage="finetune", batch_size=3, retrieval_share=0.0, caption_dropout=0.0, repeat_share=0.5,
                        return_frames=1)
    for _ in range(30):
        _memory_step(module, clips, ZeroText(), plain, gen, "cpu", 3, clips, None, mixed)
    assert {s for s, ref in seen if ref is not None} == {8}
    assert any(ref is None for s, ref in seen)


def test_the_reference_frames_sit_just_before_the_segment_as_recent_tokens():
    from pfp_app.train.memory_loop import MemoryTrainingModule

    model = build_random_model("tiny")
    module = MemoryTrainingModule(model)
    captured = []
    import pfp_app.sampling.flow as flow

    real = flow.velocity_loss

    def spy(fn, x0, noise, t, text, memory, positions):
        captured.append((memory, positions))
        return real(fn, x0, noise, t, text, memory, positions)

    flow.velocity_loss = spy
    try:
        c = model.transformer.config.in_channels
        x0, history = torch.randn(1, c, 3, 8, 8), torch.randn(1, c, 6, 8, 8)
        positions = torch.arange(6, 9, dtype=torch.float32)
        module("next_segment", torch.cat([history, x0], dim=2), torch.zeros(1, 2, model.transformer.config.text_dim),
               torch.tensor([0.5]), torch.randn_like(x0), split=6, segment_frames=3, reference=history[:, :, 1:2])
    finally:
        flow.velocity_loss = real
    memory, segment_positions = captured[0]
    assert torch.equal(segment_positions, positions)  # the segment after the split, at its own times
    g = model.transformer
    expected = recent_tokens(g, history[:, :, 1:2], torch.tensor([5.0]))
    n = expected.tokens.shape[1]
    torch.testing.assert_close(memory.tokens[:, -n:], expected.tokens)
    assert torch.all(memory.coords[-n:, 0] == 5.0)


def test_return_frames_need_repeat_batches(tmp_path):
    with pytest.raises(ValueError, match="--return-frames must be >= 0, and needs --repeat-share > 0"):
        train(TrainConfig(stage="finetune", init="tiny", out=str(tmp_path / "r"), return_frames=1))
    with pytest.raises(ValueError, match="repeat share must be in"):
        ShotAlignedStarts([["a"] * 4 + ["b"] * 4 + ["a"] * 4], 3, return_share=0.7, repeat_share=0.5)
    with pytest.raises(ValueError, match="no shot of these clips repeats an earlier shot's prompt"):
        ShotAlignedStarts([["a"] * 4 + ["b"] * 8], 3, repeat_share=0.5)


def test_a_model_trained_with_return_frames_generates_returns_with_them(tmp_path):
    out = tmp_path / "ft"
    train(TrainConfig(stage="finetune", init="tiny", out=str(out), num_clips=6, clip_seconds=20.0, batch_size=2,
                      workers=0, max_steps=2, recent_latents=1, repeat_share=0.5, return_frames=1,
                      retrieval_share=0.0, log_every=1))
    video = json.loads((out / "model" / "pfp_model.json").read_text())["sampler"]
    assert (video["return_latents"], video["return_latents_from"], video["return_latents_as_recent"]) == (1, "start", True)


def test_g_learns_to_draw_a_return_from_the_repeated_shots_opening():
    """A tiny G trained on returns that show again the frame their repeated shot began with (random latents
    otherwise, so only that frame can predict them) reaches a clearly lower loss on those batches when the trainer
    gives it that frame (--return-frames 1) than when only φ's compressed memory holds it."""
    from pfp_app.train.memory_loop import MemoryTrainingModule

    gen_data = torch.Generator().manual_seed(0)
    lat = torch.randn(16, 8, 12, 8, 8, generator=gen_data)  # (N, C, T', H', W')
    lat[:, :, 6:9] = lat[:, :, 0:1]  # the return (latents 6-8) shows the opening frame of the shot it repeats
    prompts = [["a"] * 3 + ["b"] * 3 + ["a"] * 6 for _ in range(16)]
    clips = LatentClips(lat, prompts)

    text = ZeroText(dim=384)

    def final_loss(return_frames: int) -> float:
        model = build_random_model("tiny", seed=0)
        module = MemoryTrainingModule(model).train().requires_grad_(True)
        opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
        cfg = TrainConfig(stage="finetune", batch_size=8, retrieval_share=0.0, caption_dropout=0.0,
                          repeat_share=1.0, return_frames=return_frames)
        starts = ShotAlignedStarts(prompts, 3, cut_share=1.0, repeat_share=1.0)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(120):
            loss, _ = _memory_step(module, clips, text, cfg, gen, "cpu", 3, clips, None, starts)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return sum(losses[-30:]) / 30

    with_frame, without = final_loss(1), final_loss(0)
    from conftest import report

    report(f"return frames: tiny G's loss on returns {with_frame:.3f} given the repeated shot's opening, "
           f"{without:.3f} from φ's memory alone (120 steps)")
    assert with_frame < 0.8 * without, (with_frame, without)


def test_an_export_records_the_return_settings_and_regenerates_with_them(tiny_pipeline):
    from pfp_app.film.export import Run, export_comment, parse_export_comment

    sampler = _s(tiny_pipeline, recent_latents=1, return_latents=1, return_latents_from="start",
                 return_latents_as_recent=True, return_memory_guidance_scale=1.5)
    rec = parse_export_comment(export_comment("default", [Run(0, 0, sampler.to_record())], "0s: a fox\nend: 2s"),
                               "film.mp4")
    assert rec.sampler_of(0, tiny_pipeline.model.sampler) == sampler
    # the key=value record written before: its return fields, and none where it named none
    legacy = parse_export_comment("PFP Studio | model=default seed=0 steps=8 guidance=1 recent=1 return=1 "
                                  "return_start=1 return_recent=1 return_guidance=1.5\n0s: a fox\nend: 2s", "l.mp4")
    s = legacy.sampler_of(0, tiny_pipeline.model.sampler)
    assert (s.return_latents, s.return_latents_from, s.return_latents_as_recent, s.return_memory_guidance_scale) == (
        1, "start", True, 1.5)
    old = parse_export_comment("PFP Studio | model=default seed=0 steps=8 guidance=1 recent=1\n0s: a fox\nend: 2s",
                               "old.mp4")
    s = old.sampler_of(0, sampler)
    assert (s.return_latents, s.return_latents_from, s.return_latents_as_recent, s.return_memory_guidance_scale) == (
        0, "end", False, 0.0)


def test_without_repeat_batches_the_draws_are_those_of_the_trainer_before_them():
    """repeat_share 0 draws exactly the random numbers ShotAlignedStarts drew before it had repeat batches
    (expected values recorded from the trainer of 8ed710b), so earlier runs stay reproducible."""
    prompts = [["a"] * 4 + ["b"] * 4 + ["a"] * 4, ["b"] * 2 + ["c"] * 2 + ["d"] * 4 + ["c"] * 4, ["e"] * 6 + ["f"] * 6]
    g = torch.Generator().manual_seed(3)
    starts = ShotAlignedStarts(prompts, 3, cut_share=0.3)
    draws = [(s, idx.tolist(), c) for s, idx, c in (starts.draw(2, g) for _ in range(10))]
    assert draws == [(4, [1, 0], True), (1, [2, 0], False), (8, [0, 0], True), (3, [2, 2], False),
                     (5, [0, 1], False), (9, [2, 1], False), (0, [2, 2], True), (9, [1, 1], False),
                     (9, [0, 1], False), (5, [0, 0], False)]
    assert abs(torch.rand(1, generator=g).item() - 0.5759071707725525) < 1e-7
