"""Training the codec (stage `codec`): the Wan VAE (AutoencoderKLWan) learns to reconstruct windows of frames, in
image mode (--codec-window 1) or video mode (1 + 4k frames: world or folder clips, photographs in motion and real
clips, mixed by --codec-mix). The shipped codec is the EMA one, with its latents' per-channel statistics measured
on it at the end. What both loops share (options, checkpoints, EMA, time budget, metrics): common.py.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.bundle import MODEL_CONFIGS, PFPModel
from .codec_data import CodecBatches, parse_codec_mix
from .common import (
    CODEC_LOSSES,
    RunLog,
    TrainConfig,
    build_model,
    check_config,
    lr_at,
    make_accelerator,
    make_optimizer,
    require_choice,
    save_checkpoint,
    seed_this_rank,
    set_trained,
    start_or_resume,
)
from .data import encode_clips, np_seed


class CodecTrainingModule(nn.Module):
    """The codec's reconstruction loss of a batch of windows. loss 'l1+mse' (how v1-v5 were trained): at the
    codec's error level (L1 ~0.05, MSE ~0.008) L1's gradient is ~10x MSE's, so the codec is trained mostly for
    the median error; 'mse' trains for the mean squared error alone, the quantity PSNR measures."""

    def __init__(self, vae, freeze_encoder: bool = False, loss: str = "l1+mse"):
        super().__init__()
        require_choice("--codec-loss", loss, CODEC_LOSSES)
        self.vae, self.freeze_encoder, self.loss = vae, freeze_encoder, loss

    def forward(self, x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            dist = self.vae.encode(x).latent_dist
        recon = self.vae.decode(dist.sample()).sample
        l1, mse = (recon.float() - x).abs().mean(), F.mse_loss(recon.float(), x)
        kl = dist.kl().mean() / x[0].numel()
        # detached 0-d tensors, read only on log lines: three .item() calls here were three syncs per step
        recon_loss = l1 + mse if self.loss == "l1+mse" else mse
        return recon_loss + 1e-4 * kl, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}


def train_codec(cfg: TrainConfig) -> dict:
    """Run one (resumable) session of stage codec; returns the final state (step, samples, losses)."""
    from ..model.codec import WanLatentCodec, init_temporal_identity
    from ..model.codec_widen import decoder_width, widen_decoder

    check_config(cfg)
    if cfg.stage != "codec":
        raise ValueError(f"the codec loop trains stage codec, not {cfg.stage!r}")
    t_start = time.time()
    accelerator = make_accelerator(cfg)  # and the same seed on every rank: the same initial weights
    world, device = accelerator.num_processes, accelerator.device
    model = build_model(cfg)
    # a fresh codec only: a --vae folder is trained already (re-initialising its time taps changes every latent)
    if cfg.init in MODEL_CONFIGS and not cfg.vae and cfg.codec_temporal_init == "identity":
        init_temporal_identity(model.codec.vae)
    if cfg.codec_decoder_width and cfg.codec_decoder_width != decoder_width(model.codec.vae):
        model.codec = WanLatentCodec(widen_decoder(model.codec.vae, cfg.codec_decoder_width, seed=cfg.seed))
    set_trained(model, ("vae",))
    vae = model.codec.vae
    if cfg.codec_freeze_encoder:  # the encoder side: what makes a latent (its sampling noise comes from logvar)
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    model.to(device)
    seed_this_rank(cfg, accelerator)

    # data: clips rendered or decoded once per run, windows cut from them (and photographs moved) per batch
    if (cfg.codec_window - 1) % model.codec.temporal_ratio:
        raise ValueError(f"--codec-window must be 1 + {model.codec.temporal_ratio}k frames (1 = image mode), "
                         f"not {cfg.codec_window}")
    torch.backends.cudnn.benchmark = True
    v = model.video
    batches = CodecBatches(cfg.data, cfg.num_clips, cfg.clip_seconds, v.height, v.fps, cfg.data_seed,
                           accelerator.process_index, accelerator.num_processes, cfg.workers, device,
                           mix=parse_codec_mix(cfg.codec_mix))

    module = CodecTrainingModule(vae, cfg.codec_freeze_encoder, cfg.codec_loss)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, device)
    state, ema = start_or_resume(accelerator, cfg, model, optimizer, params)
    module, optimizer = accelerator.prepare(module, optimizer)

    gen = torch.Generator().manual_seed(np_seed(cfg.seed, accelerator.process_index, state["step"]))
    log = RunLog(accelerator, cfg, state, t_start)
    accelerator.print(f"{cfg.stage}: {world} process(es) x batch {cfg.batch_size} x grad-accum {cfg.grad_accum} "
                      f"= {cfg.batch_size * world * cfg.grad_accum} samples per step, {batches.num_clips} clips on "
                      f"this rank")
    stop, progress = log.over(state), 0.0  # progress: share of this run done, for lr_at
    while not stop:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(state["step"], cfg, progress)
        micro_losses = []
        for _ in range(cfg.grad_accum):  # the last micro-batch syncs the gradients and steps the optimizer
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    x = batches(cfg.batch_size, cfg.codec_window, gen)  # (B, 3, window, H, W) in [-1, 1]
                    loss, parts = module(x)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
        ema.step(params)
        state["step"] += 1
        state["samples"] += cfg.batch_size * world * cfg.grad_accum
        log.record(state, torch.stack(micro_losses).float().mean(), "codec", lr_at(state["step"], cfg, progress),
                   parts)
        stop, checkpoint_due, progress = log.check(state)
        if checkpoint_due and not stop:  # the final checkpoint follows the loop
            log.summarise(state)
            save_checkpoint(accelerator, cfg, model, optimizer, ema, params, state, log)
    log.close()
    result = {"world_size": world, "grad_accum": cfg.grad_accum}
    if not log.losses and state["step"] > 0:  # resumed a finished run (or no time left): the checkpoint stands as is
        accelerator.print(f"nothing to do: {cfg.out} is at step {state['step']} (max {cfg.max_steps})")
        return {**state, **result}
    log.summarise(state)
    if accelerator.is_main_process and not cfg.codec_freeze_encoder:
        ema.copy_to(params)  # the shipped codec is the EMA one: its latent statistics are measured on it
        stats_gen = torch.Generator().manual_seed(cfg.seed)
        windows = torch.cat([batches(16, 17, stats_gen) for _ in range(4)])  # 64 video windows
        _set_latent_statistics(model, windows.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    save_checkpoint(accelerator, cfg, model, optimizer, ema, params, state, log, final=True)
    return {**state, **result}


@torch.no_grad()
def _set_latent_statistics(model: PFPModel, frames_u8: torch.Tensor) -> None:
    """Per-channel mean/std of the trained codec's latents, stored in the VAE config (as Wan's are)."""
    from ..model.codec import WanLatentCodec

    vae = model.codec.vae.eval()
    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    raw = encode_clips(WanLatentCodec(vae), frames_u8[:64], [""] * min(64, len(frames_u8)), model.video.fps).latents
    mean, std = raw.mean(dim=(0, 2, 3, 4)), raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    model.codec = WanLatentCodec(vae)
    vae.train()
