"""Rectified flow: noising, the two training objectives of the paper, and sampling.

x_t = (1 - t) x_0 + t ε, the DiT predicts v = ε - x_0 (Wan's flow prediction), timesteps are t * 1000.
Stage 1 (frame retrieval): compress the whole clip H with φ, pick a random set Ω of its latent frames,
noise them, and denoise H_Ω given φ(H) with the queries at their true time positions in the history.
Stage 2 (next segment): denoise the segment that follows a history, given φ(history).
Sampling goes through diffusers' flow-matching schedulers (Euler, UniPC) with timestep shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from ..model.memory_dit import MemoryTokens, join_memory
from .settings import NUM_TRAIN_TIMESTEPS, SamplerSettings


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0, noise (B, ...), t (B,) in [0, 1] -> x_t = (1 - t) x0 + t noise."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def sample_train_t(batch: int, shift: float, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Logit-normal t, shifted toward noise like Wan's sampling schedule (SD3 / Wan practice)."""
    u = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    return shift * u / (1 + (shift - 1) * u)


def velocity_loss(velocity, latents_x0, noise, t, text, memory, frame_positions) -> torch.Tensor:
    """MSE between the predicted and the true velocity (noise - x0) at x_t; x0, noise (B, C, T, H, W), t (B,).
    `velocity(x_t, timesteps, text, memory, frame_positions)` is the DiT."""
    x_t = add_noise(latents_x0, noise, t)
    v = velocity(x_t, t * NUM_TRAIN_TIMESTEPS, text, memory, frame_positions)
    return F.mse_loss(v.float(), (noise - latents_x0).float())


def flow_loss(model, latents_x0, text, memory, frame_positions, shift: float | None = None, generator=None, *,
              t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The velocity MSE of x0 (B, C, T, H, W) at a random point of its path: t (B,) logit-normal with timestep
    `shift`, then the noise (like x0), both drawn with `generator` unless given. The trainer gives both: it draws t
    with its batch generator on the CPU and the noise where the model runs."""
    if t is None:
        if shift is None:
            raise ValueError("drawing t needs the timestep shift")
        t = sample_train_t(latents_x0.shape[0], shift, generator, latents_x0.device)
    if noise is None:
        noise = torch.randn(latents_x0.shape, generator=generator, device=latents_x0.device, dtype=latents_x0.dtype)
    return velocity_loss(model, latents_x0, noise, t, text, memory, frame_positions)


def retrieval_batch(history: torch.Tensor, num_query: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ω: a sorted random set of `num_query` latent frame indices of the history (T,) -> (num_query,)."""
    t = history.shape[2]
    return torch.randperm(t, generator=generator)[: min(num_query, t)].sort().values


def retrieval_loss(model, encoder, history, text, num_query: int | None = None, shift: float | None = None,
                   generator=None, *, omega: torch.Tensor | None = None, t=None, noise=None) -> torch.Tensor:
    """Stage 1: history (B, C, T, H, W); denoise H_Ω given φ(H), the queries at their true time positions in the
    history. Ω: `omega` (sorted latent frame indices) or `num_query` frames drawn with `generator`; t and noise as
    in `flow_loss`. `model(x_t, timesteps, text, memory, frame_positions)` is G, `encoder` φ."""
    if omega is None:
        if num_query is None:
            raise ValueError("retrieval_loss needs num_query (or the query frames, omega)")
        omega = retrieval_batch(history, num_query, generator)
    omega = omega.to(history.device)
    memory = encoder(history)
    return flow_loss(model, history[:, :, omega], text, memory, omega.float(), shift, generator, t=t, noise=noise)


@dataclass
class NextSegmentBatch:
    """Stage 2's batch: the segment after a random split s of a clip, and the history before it."""

    split: int  # s: latent frames of history
    target: torch.Tensor  # (B, C, n, H, W) clip[:, :, s : s + n], the segment to denoise
    history: torch.Tensor | None  # (B, C, s, H, W) clip[:, :, :s]; None when s = 0 (the first segment)
    positions: torch.Tensor  # (n,) the segment's latent time positions s .. s + n - 1


def draw_split(frames: int, segment_frames: int, generator=None, min_history: int = 1) -> int:
    """A split s drawn uniformly from [min_history, frames - n]: the history's length before an n-frame segment."""
    if frames < min_history + segment_frames:
        raise ValueError(f"clip of {frames} latent frames is too short for a {segment_frames}-frame segment")
    return int(torch.randint(min_history, frames - segment_frames + 1, (1,), generator=generator))


def next_segment_batch(clip, segment_frames, generator=None, min_history=1, split: int | None = None) -> NextSegmentBatch:
    """clip (B, C, T, H, W) -> a split s drawn uniformly from [min_history, T - n] with `generator` (the
    trainer draws with min_history=0: a share of its batches is the first segment, which has no memory), or the
    given `split` (the trainer's shot-aligned starts)."""
    t = clip.shape[2]
    if t < min_history + segment_frames:
        raise ValueError(f"clip of {t} latent frames is too short for a {segment_frames}-frame segment")
    if split is not None and not 0 <= split <= t - segment_frames:
        raise ValueError(f"split {split} leaves no {segment_frames}-frame segment in a clip of {t} latent frames")
    s = split if split is not None else draw_split(t, segment_frames, generator, min_history)
    positions = torch.arange(s, s + segment_frames, device=clip.device, dtype=torch.float32)
    return NextSegmentBatch(s, clip[:, :, s : s + segment_frames], clip[:, :, :s] if s > 0 else None, positions)


def next_segment_loss(model, encoder, clip, text, segment_frames, shift: float | None = None, generator=None,
                      min_history=1, *, split: int | None = None, t=None, noise=None,
                      extra_memory: Callable | None = None) -> torch.Tensor:
    """Stage 2: clip (B, C, T, H, W); a split s (drawn, or the given `split`): denoise clip[s:s+n] at its time
    positions given φ(clip[:s]); t and noise as in `flow_loss`. encoder None: no memory (G alone, the trainer's
    stage `base`). extra_memory(history, positions) -> [MemoryTokens or None, ...]: tokens that join φ's memory
    after it (the trainer's recent and return frames at full resolution, memory_dit.recent_tokens)."""
    batch = next_segment_batch(clip, segment_frames, generator, min_history, split)
    memory = encoder(batch.history) if encoder is not None and batch.history is not None else None
    extra = [] if extra_memory is None else [p for p in extra_memory(batch.history, batch.positions) if p is not None]
    if extra:
        memory = join_memory(memory, *extra)
    return flow_loss(model, batch.target, text, memory, batch.positions, shift, generator, t=t, noise=noise)


def make_scheduler(name: str, shift: float):
    """diffusers' flow-matching schedulers: 'euler' or 'unipc' (Wan's default), with timestep shift."""
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    raise ValueError(f"unknown sampler {name!r}; choose 'euler' or 'unipc'")


@torch.no_grad()
def sample(
    model: Callable,
    shape: tuple[int, ...],
    text: torch.Tensor,
    memory: MemoryTokens | None,
    frame_positions: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator | None = None,
    null_text: torch.Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device="cpu",
    dtype=torch.float32,
    context: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    init_sigma: float = 1.0,
) -> torch.Tensor:
    """Integrate the flow from noise to latents of `shape` (B, C, T, H, W). Classifier-free guidance
    when guidance_scale != 1 (needs null_text). on_step(i, n) is called after every step.

    context: known latents (B, C, k, H, W) just before the segment (positions frame_positions[0] - k ..). They
    are denoised beside it, held on their own exact path x_t = (1 - t) context + t ε_c with velocity ε_c - context
    (the replacement method of Ho et al., "Video Diffusion Models", 2022): the new frames are drawn to continue
    them, with no retraining, since G was trained on segments that start anywhere in a clip. The segment's own
    noise is drawn first, so a segment with context starts from the same noise as one without.

    init: latents of `shape` the segment starts from instead of pure noise (SDEdit, Meng et al. 2022): noised to
    the first step whose noise level is at most `init_sigma`, x = (1 - σ) init + σ ε with the segment's own noise,
    and integrated from there (the steps above it are skipped: the layout is init's, the details are drawn anew)."""
    scheduler = make_scheduler(settings.sampler, settings.shift)
    scheduler.set_timesteps(settings.steps, device=device)
    x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    k = 0 if context is None else context.shape[2]
    if k:
        ctx = context.float().to(device)  # (B, C, k, H, W)
        ctx_noise = torch.randn(ctx.shape, generator=generator, dtype=torch.float32).to(device)
        back = torch.arange(k, 0, -1, dtype=frame_positions.dtype, device=frame_positions.device)
        frame_positions = torch.cat([frame_positions[:1] - back, frame_positions])  # (k + T,)
        x = torch.cat([ctx_noise, x], dim=2)  # (B, C, k + T, H, W)
    start = 0
    if init is not None:
        sigmas = [float(s) for s in scheduler.sigmas[: len(scheduler.timesteps)]]
        start = next((i for i, s in enumerate(sigmas) if s <= init_sigma), len(sigmas))
        if start == len(sigmas):
            return init.float().to(device)
        x[:, :, k:] = (1 - sigmas[start]) * init.float().to(device) + sigmas[start] * x[:, :, k:]
        scheduler.set_begin_index(start)
    scales = [settings.guidance_at(float(t)) for t in scheduler.timesteps]
    if any(g != 1.0 for g in scales[start:]) and null_text is None:
        raise ValueError("guidance needs the unconditional text embedding")
    for i, (t, scale) in list(enumerate(zip(scheduler.timesteps, scales)))[start:]:
        if k:  # the context on its exact path at this step's noise level
            sigma = float(scheduler.sigmas[i])
            x[:, :, :k] = (1 - sigma) * ctx + sigma * ctx_noise
        ts = t.expand(shape[0]).to(device)
        v_cond = model(x.to(dtype), ts, text, memory, frame_positions).float()
        v = v_cond
        if scale != 1.0:
            v_null = model(x.to(dtype), ts, null_text, memory, frame_positions).float()
            v = v_null + scale * (v_cond - v_null)
        if settings.memory_guidance_scale and memory is not None:
            v_alone = model(x.to(dtype), ts, text, None, frame_positions).float()  # the text without the history
            v = v + settings.memory_guidance_scale * (v_cond - v_alone)
        if k:
            v[:, :, :k] = ctx_noise - ctx  # its true velocity: the solver's history stays consistent
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, settings.steps)
    return x[:, :, k:]
