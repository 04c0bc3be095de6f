"""Training the codec (stage `codec`): the Wan VAE (AutoencoderKLWan) learns to reconstruct windows of frames, in
image mode (--codec-window 1) or video mode (1 + 4k frames: world or folder clips, photographs in motion and real
clips, mixed by --codec-mix). The shipped codec is the EMA one, with its latents' per-channel statistics measured
on it at the end. What both loops share (options, checkpoints, EMA, time budget, metrics, the optimizer loop):
common.py.
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
    TrainConfig,
    build_model,
    check_config,
    make_accelerator,
    make_optimizer,
    require_choice,
    run_steps,
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
    accelerator.print(f"{cfg.stage}: {world} process(es) x batch {cfg.batch_size} x grad-accum {cfg.grad_accum} "
                      f"= {cfg.batch_size * world * cfg.grad_accum} samples per step, {batches.num_clips} clips on "
                      f"this rank")

    def micro_step():  # one micro-batch: windows (B, 3, window, H, W) in [-1, 1], their loss and its parts
        loss, parts = module(batches(cfg.batch_size, cfg.codec_window, gen))
        return loss, "codec", parts

    # the optimizer loop, the same for every stage (common.run_steps): lr, micro-batches, EMA, log, checkpoints
    log = run_steps(accelerator, cfg, model, module, optimizer, ema, params, state, t_start, micro_step)
    result = {"world_size": world, "grad_accum": cfg.grad_accum}
    if log is None:  # nothing to do: the checkpoint stands as is
        return {**state, **result}
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
