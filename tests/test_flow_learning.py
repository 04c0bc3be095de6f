"""Rectified flow conventions, both training objectives' wiring, and the learning test of issue 2.

The learning test trains a tiny φ + G with the stage-1 retrieval loss only and then asks G to
retrieve frames of clips it has never seen. What "held out" means here: every training step draws
new random clips, so no clip can be stored in G's weights; the test clips come from another seed,
and each of their frames is queried at its true time position, from noise, given φ(clip) alone.
Training on one fixed clip would leave room for G to memorise that clip's frames as a function of
time (the zeroed memory tokens keep their RoPE coordinates, so time still reaches G); unseen clips
rule that out, so a win over the zeroed memory can only come through φ.
"""

from __future__ import annotations

import time

import pytest
import torch

from pfp_app.model.memory_dit import MemoryTokens, memory_dit_forward
from pfp_app.sampling.flow import (
    NUM_TRAIN_TIMESTEPS,
    SamplerSettings,
    add_noise,
    draw_split,
    flow_loss,
    make_scheduler,
    next_segment_batch,
    next_segment_loss,
    retrieval_batch,
    retrieval_loss,
    sample,
    sample_train_t,
)
from pfp_app.model.memory_encoder import MemoryEncoder
from pfp_app.evaluation.metrics import psnr

from conftest import report, small_transformer

# ---- conventions -----------------------------------------------------------------------------


def test_add_noise_endpoints_and_straight_path():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    assert torch.equal(add_noise(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(3)), noise)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = add_noise(x0, noise, t)
    for i in range(3):  # per-sample t, on the straight line x0 + t (noise - x0)
        torch.testing.assert_close(x_t[i], x0[i] + t[i] * (noise[i] - x0[i]))


def _oracle(x0):
    """A perfect velocity model for a known x0: v = (x_t - x0) / t = noise - x0 on the straight path."""
    def model(x, timestep, text, memory, positions):
        sigma = (timestep.float() / NUM_TRAIN_TIMESTEPS).view(-1, *[1] * (x.ndim - 1))
        return (x - x0) / sigma
    return model


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_with_the_perfect_velocity_recovers_x0(steps):
    """Fixes the sign of v (noise - x0) and the timestep scale (t * 1000) the samplers feed the DiT."""
    x0 = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sample(_oracle(x0), x0.shape, None, None, None, SamplerSettings(steps=steps, sampler="euler", shift=3.0),
                 torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)
    # a model with the opposite sign convention lands far away
    flipped = sample(lambda *a: -_oracle(x0)(*a), x0.shape, None, None, None,
                     SamplerSettings(steps=steps, sampler="euler", shift=3.0), torch.Generator().manual_seed(2))
    assert (flipped - x0).abs().mean() > 0.5


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampling_the_constant_velocity_noise_minus_x0_recovers_x0(sampler, shift):
    """The model returns noise - x0 for the very noise `sample` starts from (same seeded generator)."""
    x0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    out = sample(lambda *a: noise - x0, x0.shape, None, None, None, SamplerSettings(steps=8, sampler=sampler, shift=shift),
                 torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def _still_clip_denoiser(x, t, text, memory, positions):
    """The exact velocity for clips that hold one picture throughout (x0 = c on every frame, c ~ N(0, I)): the
    posterior mean of c pools every frame of x_t, so frames denoised together agree with each other."""
    s = (t.float() / NUM_TRAIN_TIMESTEPS).clamp(min=1e-4).view(-1, 1, 1, 1, 1)
    frames = x.shape[2]
    c_hat = ((1 - s) / s**2) * x.sum(dim=2, keepdim=True) / (1 + frames * (1 - s) ** 2 / s**2)
    return (x - c_hat) / s  # v = (x_t - x0) / t


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_context_latents_pull_the_new_frames_toward_the_previous_picture(sampler):
    """With the previous segment's last latents as context, a model of still clips draws the new segment close to
    that picture (the join shrinks); without it the new segment is a picture of its own. The replacement method
    only pulls (the context enters through its noisy path), and more context pulls harder. The context sits just
    before the segment's positions, and the segment's own noise is the same with and without it."""
    settings = SamplerSettings(steps=12, sampler=sampler, shift=3.0)
    positions = torch.arange(3, 6, dtype=torch.float32)
    seen = []

    def spy(x, t, text, memory, pos):
        seen.append(pos.clone())
        return _still_clip_denoiser(x, t, text, memory, pos)

    err = {0: 0.0, 1: 0.0, 2: 0.0}  # context frames -> mean squared distance of the new frames from the picture
    for seed in range(8):
        picture = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(100 + seed))
        for k in err:
            out = sample(spy, (1, 4, 3, 4, 4), None, None, positions, settings, torch.Generator().manual_seed(seed),
                         context=picture.expand(1, 4, k, 4, 4) if k else None)
            assert out.shape == (1, 4, 3, 4, 4)
            assert torch.equal(seen[-1], torch.arange(3 - k, 6, dtype=torch.float32))
            err[k] += (out - picture).pow(2).mean().item() / 8
    assert err[1] < 0.5 * err[0] and err[2] < err[1], err
    assert err[0] > 1.0  # without context: another picture (prior variance 1, plus its own)


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_memory_guidance_extrapolates_from_the_text_alone_toward_the_memory(sampler):
    """v = v(text, memory) + w (v(text, memory) - v(text, no memory)): with velocities that lead to x0_mem and
    x0_alone, sampling lands on x0_mem + w (x0_mem - x0_alone); w = 0 and no memory leave G's own answer."""
    x0_mem, x0_alone = (torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(k)) for k in (7, 8))
    noise = torch.randn(x0_mem.shape, generator=torch.Generator().manual_seed(4))
    model = lambda x, t, text, memory, pos: noise - (x0_alone if memory is None else x0_mem)  # noqa: E731
    run = lambda w, memory: sample(model, x0_mem.shape, None, memory, None,  # noqa: E731
                                   SamplerSettings(steps=8, sampler=sampler, memory_guidance_scale=w),
                                   torch.Generator().manual_seed(4))
    torch.testing.assert_close(run(2.0, "history"), x0_mem + 2.0 * (x0_mem - x0_alone), atol=1e-3, rtol=0)
    torch.testing.assert_close(run(0.0, "history"), x0_mem, atol=1e-3, rtol=0)
    torch.testing.assert_close(run(2.0, None), x0_alone, atol=1e-3, rtol=0)  # a first segment: nothing to guide by


def test_a_shots_first_segment_takes_no_context_and_no_memory_guidance():
    s = SamplerSettings(context_latents=2, shot_start_guidance_scale=6.0, memory_guidance_scale=1.5)
    assert s.for_segment(shot_start=True).context_latents == 0
    assert s.for_segment(shot_start=True).memory_guidance_scale == 0.0  # nor memory guidance: the text sets it
    assert s.for_segment(shot_start=False).context_latents == 2
    assert s.for_segment(shot_start=False).memory_guidance_scale == 1.5
    assert SamplerSettings(context_latents=1).for_segment(shot_start=True).context_latents == 0


def test_schedulers_start_from_pure_noise_and_end_clean():
    for name in ("euler", "unipc"):
        s = make_scheduler(name, 3.0)
        s.set_timesteps(6)
        assert float(s.sigmas[0]) == pytest.approx(1.0, abs=1e-5) and float(s.sigmas[-1]) == 0.0
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        make_scheduler("ddim", 3.0)


def test_guidance_needs_the_null_text():
    with pytest.raises(ValueError, match="unconditional"):
        sample(lambda *a: a[0], (1, 4, 1, 4, 4), None, None, None, SamplerSettings(steps=2, guidance_scale=5.0))


def test_two_scale_guidance_applies_each_scale_on_its_side_of_the_boundary():
    """Wan 2.2-style guidance: guidance_scale at timesteps >= boundary_ratio * 1000, guidance_scale_2 below, and
    no unconditional forward where the scale is 1. A velocity of 1 with the prompt and 0 without makes the
    guided velocity the scale itself, so Euler's end point is x_T - sum(scale_i * dsigma_i)."""
    calls = []

    def velocity(x, t, text, memory, positions):
        calls.append(float(t[0]))
        return torch.full_like(x, float(text.sum() > 0))

    settings = SamplerSettings(steps=8, sampler="euler", shift=3.0, guidance_scale=6.0, guidance_scale_2=1.0,
                               boundary_ratio=0.6)
    text, null = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    out = sample(velocity, (1, 2, 1, 2, 2), text, None, None, settings, torch.Generator().manual_seed(0), null_text=null)
    sched = make_scheduler("euler", 3.0)
    sched.set_timesteps(8)
    scales = [6.0 if t >= 600 else 1.0 for t in sched.timesteps.tolist()]
    assert 1.0 in scales and 6.0 in scales  # both sides of the boundary occur
    assert len(calls) == 8 + scales.count(6.0)  # one forward per step, two where guided
    x_t = torch.randn((1, 2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    expected = x_t + sum(g * float(b - a) for g, a, b in zip(scales, sched.sigmas[:-1], sched.sigmas[1:]))
    torch.testing.assert_close(out, expected)
    one_scale = SamplerSettings(steps=8, sampler="euler", shift=3.0, guidance_scale=6.0)
    assert [one_scale.guidance_at(t) for t in (999.0, 10.0)] == [6.0, 6.0]  # guidance_scale_2 None: one scale


def test_flow_loss_of_the_perfect_model_is_zero():
    x0 = torch.randn(3, 4, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    loss = flow_loss(_oracle(x0), x0, None, None, None, shift=3.0, generator=torch.Generator().manual_seed(6))
    assert loss.item() < 1e-8


def test_retrieval_loss_denoises_the_queried_frames_at_their_true_times():
    """A model that is perfect only if `positions` name the frames it is asked to denoise."""
    history = torch.randn(2, 4, 10, 8, 8, generator=torch.Generator().manual_seed(7))
    enc = MemoryEncoder(latent_channels=4, hidden_dim=8, rate="2x2x1", variant="only_lr")
    seen = {}

    def model(x, timestep, text, memory, positions):
        seen.update(positions=positions, memory=memory)
        return _oracle(history[:, :, positions.long()])(x, timestep, text, memory, positions)

    loss = retrieval_loss(model, enc, history, None, num_query=3, shift=3.0, generator=torch.Generator().manual_seed(8))
    assert loss.item() < 1e-8
    assert seen["positions"].shape == (3,) and torch.all(seen["positions"][1:] > seen["positions"][:-1])
    assert seen["memory"].coords[:, 0].max() == 9  # φ saw the whole clip (rate t = 1: one memory frame each)
    omega = retrieval_batch(history, 50, torch.Generator().manual_seed(0))
    assert torch.equal(omega, torch.arange(10))  # asking for more frames than exist gives them all


def test_next_segment_loss_sees_only_the_past_and_denoises_what_follows():
    clip = torch.randn(1, 4, 9, 8, 8, generator=torch.Generator().manual_seed(9))
    enc = MemoryEncoder(latent_channels=4, hidden_dim=8, rate="2x2x1", variant="only_lr")
    for seed in range(5):
        seen = {}

        def model(x, timestep, text, memory, positions):
            seen.update(positions=positions, memory=memory)
            return _oracle(clip[:, :, positions.long()])(x, timestep, text, memory, positions)

        loss = next_segment_loss(model, enc, clip, None, segment_frames=3, shift=3.0, generator=torch.Generator().manual_seed(seed))
        s = int(seen["positions"][0])
        assert loss.item() < 1e-8
        assert torch.equal(seen["positions"], torch.arange(s, s + 3, dtype=torch.float32))
        assert seen["memory"].coords[:, 0].max() == s - 1  # the memory ends right before the segment
    with pytest.raises(ValueError, match="too short"):
        next_segment_loss(model, enc, clip[:, :, :3], None, segment_frames=3, shift=3.0)


def test_the_objectives_take_the_trainers_draws_and_its_extra_memory():
    """The trainer draws Ω or the split, t and the noise itself (t on the CPU, the noise where G runs) and hands
    them to these objectives: given the very draws an objective makes with its generator, the loss is the same.
    Extra memory (the trainer's recent and return frames) joins after φ's, built from the history before the split
    and the segment's positions; without φ (stage `base`) the segment is denoised with no memory."""
    clip = torch.randn(2, 4, 10, 8, 8, generator=torch.Generator().manual_seed(12))
    enc = MemoryEncoder(latent_channels=4, hidden_dim=8, rate="2x2x1", variant="only_lr")
    seen = {}

    def model(x, timestep, text, memory, positions):
        seen["memory"] = memory
        shown = 0.0 if memory is None else memory.tokens.mean()
        return 0.5 * x + shown + positions.view(1, 1, -1, 1, 1) + timestep.view(-1, 1, 1, 1, 1) / 1000

    drawn = retrieval_loss(model, enc, clip, None, num_query=3, shift=3.0, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    omega, t = retrieval_batch(clip, 3, g), sample_train_t(2, 3.0, g)
    given = retrieval_loss(model, enc, clip, None, omega=omega, t=t, noise=torch.randn(2, 4, 3, 8, 8, generator=g))
    assert drawn.item() > 0.1 and torch.equal(given, drawn)

    drawn = next_segment_loss(model, enc, clip, None, 3, shift=2.0, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    split, t = draw_split(10, 3, g), sample_train_t(2, 2.0, g)
    noise = torch.randn(2, 4, 3, 8, 8, generator=g)
    assert torch.equal(next_segment_loss(model, enc, clip, None, 3, split=split, t=t, noise=noise), drawn)

    extra = MemoryTokens(torch.full((2, 5, 8), 7.0), torch.zeros(5, 3))

    def extra_memory(history, positions):
        seen.update(history=history, positions=positions)
        return [extra, None]

    next_segment_loss(model, enc, clip, None, 3, split=4, t=t, noise=noise, extra_memory=extra_memory)
    assert torch.equal(seen["history"], clip[:, :, :4])
    assert torch.equal(seen["positions"], torch.arange(4, 7, dtype=torch.float32))
    phi = enc(clip[:, :, :4])
    assert torch.equal(seen["memory"].tokens, torch.cat([phi.tokens, extra.tokens], dim=1))
    next_segment_loss(model, None, clip, None, 3, split=4, t=t, noise=noise)
    assert seen["memory"] is None
    with pytest.raises(ValueError, match="needs num_query"):
        retrieval_loss(model, enc, clip, None, t=t, noise=noise)
    with pytest.raises(ValueError, match="timestep shift"):
        next_segment_loss(model, enc, clip, None, 3, split=4)


def test_next_segment_batch_with_no_minimum_history_includes_the_first_segment_without_memory():
    """The trainer's stage-2 batches (min_history=0): every split 0..T-n occurs; s = 0 has no history."""
    clip = torch.randn(2, 4, 7, 8, 8, generator=torch.Generator().manual_seed(10))
    gen = torch.Generator().manual_seed(11)
    splits = set()
    for _ in range(60):
        batch = next_segment_batch(clip, 3, gen, min_history=0)
        splits.add(batch.split)
        assert torch.equal(batch.target, clip[:, :, batch.split : batch.split + 3])
        assert torch.equal(batch.positions, torch.arange(batch.split, batch.split + 3, dtype=torch.float32))
        if batch.split == 0:
            assert batch.history is None
        else:
            assert torch.equal(batch.history, clip[:, :, : batch.split])
    assert splits == set(range(5))
    assert min(next_segment_batch(clip, 3, gen).split for _ in range(30)) == 1  # the loss's default: some memory


# ---- the learning test -----------------------------------------------------------------------

C, FRAMES, SIZE, BLOCK = 4, 8, 8, 4  # latent clip (C, 8, 8, 8): each frame a 2x2 mosaic of random colours
TRAIN_STEPS, BATCH, NUM_QUERY, SHIFT = 300, 8, 2, 1.0
TEST_CLIPS, SAMPLE_STEPS = 4, 10


def mosaic_clips(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, C, FRAMES, SIZE, SIZE) in [-1, 1]: every frame an independent mosaic of 4x4-latent tiles.

    Frames differ from each other and from the clip's mean, and nothing about a frame can be guessed
    from its time or from the other frames: only the memory of that very clip can tell it.
    """
    tiles = torch.rand(n, C, FRAMES, SIZE // BLOCK, SIZE // BLOCK, generator=generator) * 2 - 1
    return tiles.repeat_interleave(BLOCK, 3).repeat_interleave(BLOCK, 4)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    dit = small_transformer(seed=0, in_channels=C, layers=2, ffn_dim=128)  # G: width 64, 2 layers
    enc = MemoryEncoder(latent_channels=C, hidden_dim=64, rate="2x2x1", variant="proposed",
                        hr_base_channels=16, hr_channels=32, hr_attention_layers=1, hr_heads=2)  # φ
    enc.init_from_transformer(dit.patch_embedding)
    text = torch.randn(1, 4, dit.config.text_dim, generator=torch.Generator().manual_seed(9))

    def model(x, timestep, txt, memory, positions):
        return memory_dit_forward(dit, x, timestep, txt.expand(x.shape[0], -1, -1), memory, positions)

    params = [*dit.parameters(), *enc.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    dit.train(), enc.train()
    t0 = time.perf_counter()
    losses = []
    for _ in range(TRAIN_STEPS):
        loss = retrieval_loss(model, enc, mosaic_clips(BATCH, gen), text, NUM_QUERY, SHIFT, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    dit.eval(), enc.eval()

    clips = mosaic_clips(TEST_CLIPS, torch.Generator().manual_seed(12345))  # never seen in training
    scores = {"memory": [], "zeroed": [], "mean": [], "wrong_time": []}
    settings = SamplerSettings(steps=SAMPLE_STEPS, sampler="euler", shift=SHIFT)
    with torch.no_grad():
        for clip in clips:
            memory = enc(clip[None])
            zeroed = MemoryTokens(memory.tokens * 0, memory.coords)  # φ's output zeroed, coordinates kept
            mean = clip.mean(dim=1)  # (C, H, W): the history-mean baseline
            for k in range(FRAMES):
                pos, shape = torch.tensor([float(k)]), (1, C, 1, SIZE, SIZE)
                got = sample(model, shape, text, memory, pos, settings, torch.Generator().manual_seed(k))[0, :, 0]
                got0 = sample(model, shape, text, zeroed, pos, settings, torch.Generator().manual_seed(k))[0, :, 0]
                truth = clip[:, k]
                scores["memory"].append(psnr(got, truth))
                scores["zeroed"].append(psnr(got0, truth))
                scores["mean"].append(psnr(mean, truth))
                scores["wrong_time"].append(max(psnr(got, clip[:, j]) for j in range(FRAMES) if j != k))
    result = {k: sum(v) / len(v) for k, v in scores.items()}
    result.update(first_loss=sum(losses[:10]) / 10, last_loss=sum(losses[-10:]) / 10, train_s=train_s)
    report(f"learning test ({TRAIN_STEPS} steps x {BATCH} clips, {train_s:.1f} s training; retrieval of every frame of "
           f"{TEST_CLIPS} unseen clips, euler {SAMPLE_STEPS} steps, latent PSNR): with memory {result['memory']:.2f} dB, "
           f"memory zeroed {result['zeroed']:.2f} dB, history mean {result['mean']:.2f} dB, "
           f"best wrong-time frame {result['wrong_time']:.2f} dB; loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}")
    return result


def test_training_lowers_the_retrieval_loss(trained):
    assert trained["last_loss"] < 0.25 * trained["first_loss"]


def test_retrieval_from_memory_beats_the_zeroed_memory(trained):
    assert trained["memory"] >= trained["zeroed"] + 3.0


def test_retrieval_from_memory_beats_the_history_mean(trained):
    assert trained["memory"] >= trained["mean"] + 3.0


def test_retrieval_returns_the_frame_of_the_queried_time(trained):
    """Not just some remembered frame: the one at the query's time position."""
    assert trained["memory"] >= trained["wrong_time"] + 3.0
