"""Stage 2 trains on the segments the app generates: within one shot, a share of them starting a shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfp_app.data.world import parse_caption, sample_storyboard
from pfp_app.sampling.flow import next_segment_batch
from pfp_app.film.storyboard import format_storyboard
from pfp_app.train.data import LatentClips, ShotAlignedStarts, character_returns_at, latent_prompts
from pfp_app.train.memory_loop import _memory_step
from pfp_app.train.trainer import TrainConfig, train

N = 5  # the default model's segment (latent frames)
T = 41  # latent frames of a 20-s clip at 8 fps


def world_prompts(num_clips: int, seconds: float = 20.0) -> list[list[str]]:
    """Every latent frame's prompt in the clips the trainer renders (storyboards of 2-8 s shots)."""
    return [latent_prompts(format_storyboard(sample_storyboard(np.random.default_rng([seed, 7919]), seconds=seconds)),
                           T, 8, 4) for seed in range(num_clips)]


def is_shot_start(p: list[str], s: int) -> bool:
    return s == 0 or p[s] != p[s - 1]


def test_drawn_segments_stay_in_one_shot_and_a_share_starts_one():
    prompts = world_prompts(64)
    starts = ShotAlignedStarts(prompts, N, cut_share=0.5)
    gen = torch.Generator().manual_seed(0)
    kinds, first = [], 0
    for _ in range(400):
        s, idx, at_cut = starts.draw(16, gen)
        for i in idx.tolist():
            assert len(set(prompts[i][s : s + N])) == 1  # the app's segments never cross a cut
            assert is_shot_start(prompts[i], s) == at_cut
        kinds.append(at_cut)
        first += at_cut and s == 0
    assert 0.4 < np.mean(kinds) < 0.6
    # the first segment (no memory: text alone draws the place) is a real share of the shot starts
    assert 0.12 < first / sum(kinds) < 0.45
    # what it replaces: a split drawn uniformly starts a shot in about 1 of 9 draws and crosses a cut in 1 of 3
    gen = torch.Generator().manual_seed(0)
    uniform = [next_segment_batch(torch.zeros(1, 1, T, 1, 1), N, gen, min_history=0).split for _ in range(400)]
    rows = [prompts[k % 64] for k in range(400)]
    assert np.mean([is_shot_start(p, s) for p, s in zip(rows, uniform)]) < 0.2
    assert np.mean([len(set(p[s : s + N])) > 1 for p, s in zip(rows, uniform)]) > 0.25


def test_the_trainer_step_gives_g_the_shot_prompt_and_the_history_before_the_cut():
    prompts = world_prompts(16)
    clips = LatentClips(torch.randn(16, 4, T, 2, 2), prompts)
    seen = {}

    class Text:
        def encode(self, ps):
            seen["prompts"] = ps
            return torch.zeros(len(ps), 2, 3)

        def null(self, b):
            return torch.zeros(b, 2, 3)

    def module(objective, latents, text, t, noise, omega=None, split=None, segment_frames=None, recent=0,
               reference=None):
        batch = next_segment_batch(latents, segment_frames, split=split)  # the segment and history it is given
        seen.update(x0=batch.target, history=batch.history, positions=batch.positions, recent=recent)
        return torch.zeros(())

    cfg = TrainConfig(stage="finetune", batch_size=8, retrieval_share=0.0, caption_dropout=0.0)
    starts = ShotAlignedStarts(prompts, N, cut_share=1.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        _, kind = _memory_step(module, clips, Text(), cfg, gen, "cpu", N, clips, None, starts)
        assert kind == "next_segment"
        s = int(seen["positions"][0])
        history = seen["history"]
        assert (history is None) == (s == 0) and (history is None or history.shape[2] == s)
        rows = [next(i for i in range(16) if torch.equal(clips.latents[i, :, s : s + N], x)) for x in seen["x0"]]
        assert all(is_shot_start(prompts[i], s) for i in rows)
        assert seen["prompts"] == [prompts[i][s] for i in rows]
        assert seen["recent"] == 0  # shot starts never see the frame before the cut (and recent_latents is 0 here)


def characters(caption: str) -> set:
    scene = parse_caption(caption)
    return set(scene.characters) if scene is not None else set()


def test_a_character_return_is_a_shot_start_whose_character_left_and_comes_back():
    a, b = "a red striped circle in front of the brick wall", "a blue dotted square in front of the grass field"
    c = "a red striped circle and a yellow dotted square in front of the grass field"  # with a companion
    prompts = [a] * 3 + [b] * 3 + [c] * 3 + [a] * 3
    assert character_returns_at(prompts, 6)  # the red circle, absent during b, is back
    assert not character_returns_at(prompts, 3)  # a new character
    assert not character_returns_at(prompts, 9)  # the red circle was in the shot just before
    assert not character_returns_at(prompts, 0) and not character_returns_at(prompts, 7)  # not a shot start
    assert not character_returns_at(prompts[:6] + ["the brick wall, empty"] * 3, 6)  # no character asked


def test_return_batches_bring_back_a_character_the_memory_holds():
    prompts = world_prompts(64)
    for share, low, high in ((0.0, 0.0, 0.25), (0.8, 0.7, 0.95)):
        starts = ShotAlignedStarts(prompts, N, cut_share=1.0, return_share=share)
        gen = torch.Generator().manual_seed(1)
        returns = 0
        for _ in range(300):
            s, idx, at_cut = starts.draw(8, gen)
            assert at_cut
            flags = [character_returns_at(prompts[i], s) for i in idx.tolist()]
            returns += all(flags)
            for i, back in zip(idx.tolist(), flags):
                if back:  # checked from the captions, not the helper: the character is in the memory, not the last shot
                    new = characters(prompts[i][s]) - characters(prompts[i][s - 1])
                    assert new & set().union(*(characters(p) for p in prompts[i][: s - 1]))
        assert low <= returns / 300 <= high, (share, returns)


def test_bad_settings_get_one_clear_message(tmp_path):
    with pytest.raises(ValueError, match=r"cut share must be in \[0, 1\]"):
        ShotAlignedStarts(world_prompts(2), N, cut_share=1.5)
    with pytest.raises(ValueError, match=r"return share must be in \[0, 1\]"):
        ShotAlignedStarts(world_prompts(2), N, return_share=-0.1)
    with pytest.raises(ValueError, match="no shot of these clips brings back a character"):
        ShotAlignedStarts([["a red striped circle in front of the brick wall"] * 6
                           + ["the grass field, empty"] * 6], N, return_share=0.5)
    with pytest.raises(ValueError, match="too short for a 5-frame segment"):
        ShotAlignedStarts([["a"] * 4], N)
    with pytest.raises(ValueError, match="--segment-starts must be 'shots' or 'uniform'"):
        train(TrainConfig(stage="finetune", init="tiny", out=str(tmp_path), segment_starts="cuts"))
