"""Training G and φ: stage 1 (`pretrain`: frame retrieval), stage 2 (`finetune`: next segment, keeping a share of
retrieval batches) and `base` (G alone, no memory: a small stand-in for a pretrained video model such as Wan, which
the paper starts stage 1 from).

The clips are encoded once by the frozen codec (or read from --latent-cache) and kept on the device. Each batch's
randomness is drawn here (`_memory_step`); its loss is one of the paper's two objectives in sampling/flow.py
(`retrieval_loss`, `next_segment_loss`), computed inside `MemoryTrainingModule.forward`, so that one DDP forward
covers φ and G. What both loops share (options, checkpoints, EMA, time budget, metrics, the optimizer loop):
common.py.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import replace

import torch
import torch.nn as nn

from ..model.bundle import PFPModel
from ..model.memory_dit import history_recent_tokens, memory_dit_forward, recent_tokens
from ..model.text_encoder import PrecomputedTextEncoder
from ..sampling.flow import draw_split, next_segment_loss, retrieval_batch, retrieval_loss, sample_train_t
from .common import (
    TrainConfig,
    build_model,
    check_config,
    make_accelerator,
    make_optimizer,
    run_steps,
    save_checkpoint,
    seed_this_rank,
    set_trained,
    start_or_resume,
)
from .data import (
    LatentClips,
    ShotAlignedStarts,
    cached_latents,
    caption_table_from_file,
    clip_dataset,
    encode_clips,
    latent_clips,
    load_clips,
    module_fingerprint,
    np_seed,
    restrict_storyboard,
    shard_indices,
    source_fingerprint,
)


class MemoryTrainingModule(nn.Module):
    """G and φ in one module so that DDP sees one forward: the loss of one batch under one of flow.py's objectives,
    with the batch's draws (Ω or the split, t, noise) given."""

    def __init__(self, model: PFPModel):
        super().__init__()
        self.transformer, self.memory_encoder = model.transformer, model.memory_encoder

    def forward(self, objective: str, latents, text, t, noise, omega=None, split: int | None = None,
                segment_frames: int | None = None, recent: int = 0, reference=None):
        """objective 'retrieval' (stage 1: denoise latents[:, :, omega] given φ(latents)), 'next_segment' (stage 2:
        denoise the segment_frames after `split` given φ(latents[:, :, :split])) or 'segment' (the same segment, no
        memory: stage `base`). latents (B, C, T, H, W); t (B,) in [0, 1]; noise like the denoised frames.
        recent: the history's last `recent` latents join the memory as full-resolution tokens
        (memory_dit.recent_tokens); reference (B, C, k, H, W): latents that join it the same way, placed just before
        the segment (a return given the frames the shot it repeats began with, as the app gives them)."""
        velocity = functools.partial(memory_dit_forward, self.transformer)
        if objective == "retrieval":
            return retrieval_loss(velocity, self.memory_encoder, latents, text, omega=omega, t=t, noise=noise)
        encoder = self.memory_encoder if objective == "next_segment" else None
        extra = functools.partial(self._full_resolution, recent, reference)
        return next_segment_loss(velocity, encoder, latents, text, segment_frames, split=split, t=t, noise=noise,
                                 extra_memory=extra)

    def _full_resolution(self, recent: int, reference, history, positions) -> list:
        """The memory tokens beside φ's: the history's last `recent` latents, then the reference latents."""
        parts = []
        if recent and history is not None:
            parts.append(history_recent_tokens(self.transformer, history, recent))
        if reference is not None:
            k, first = reference.shape[2], positions[0]
            times = first - torch.arange(k, 0, -1, dtype=positions.dtype, device=positions.device)
            parts.append(recent_tokens(self.transformer, reference, times))
        return parts


def train_memory(cfg: TrainConfig) -> dict:
    """Run one (resumable) session of stage base, pretrain or finetune; returns the final state (step, samples,
    losses)."""
    check_config(cfg)
    if cfg.stage not in ("base", "pretrain", "finetune"):
        raise ValueError(f"the memory loop trains stages base, pretrain and finetune, not {cfg.stage!r}")
    t_start = time.time()
    accelerator = make_accelerator(cfg)  # and the same seed on every rank: the same initial weights
    world, device = accelerator.num_processes, accelerator.device
    model = build_model(cfg)
    set_trained(model, ("transformer",) if cfg.stage == "base" else ("transformer", "memory_encoder"))
    if cfg.stage == "finetune":  # the exported model generates as it was last trained: with recent frames or not
        # and at a return with the frames it was trained with, or none (not what an --init model was trained with)
        model.sampler = replace(model.sampler, recent_latents=cfg.recent_latents, return_latents=cfg.return_frames,
                                return_latents_from="start" if cfg.return_frames else "end",
                                return_latents_as_recent=bool(cfg.return_frames))
    if cfg.stage == "finetune" and cfg.lora_rank > 0:
        from peft import LoraConfig

        model.transformer.requires_grad_(False)
        model.transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    if cfg.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    model.to(device)
    seed_this_rank(cfg, accelerator)

    # data: rendered once per run and encoded (or read from --latent-cache), kept on the device
    text_encoder = _text_encoder(model, cfg)
    clips = _training_latents(model, cfg, accelerator, text_encoder)
    retrieval_clips = clips
    if cfg.stage == "finetune" and cfg.retrieval_data:  # e.g. captioned world for stage 2, real footage for recall
        retrieval_clips = _training_latents(model, replace(cfg, data=cfg.retrieval_data), accelerator, text_encoder)
    n = model.video.segment_latent_frames
    starts = (ShotAlignedStarts(clips.prompts, n, cfg.cut_share, cfg.return_share, cfg.repeat_share)
              if cfg.segment_starts == "shots" and cfg.stage != "pretrain" else None)

    module = MemoryTrainingModule(model)
    params = _trainable(model, cfg)
    optimizer = make_optimizer(params, cfg, device)
    state, ema = start_or_resume(accelerator, cfg, model, optimizer, params)
    module, optimizer = accelerator.prepare(module, optimizer)
    export = _lora_merged if cfg.stage == "finetune" and cfg.lora_rank > 0 else None

    gen = torch.Generator().manual_seed(np_seed(cfg.seed, accelerator.process_index, state["step"]))
    # the flow noise is drawn where the model runs: drawn on the CPU and copied over, with a sync per step and
    # per-tensor AdamW/EMA, it left an H200 idle half of each step (benchmarks/g_throughput.py: kernel busy 48%
    # as v2 was trained, 93% now)
    noise_gen = torch.Generator(device).manual_seed(np_seed(cfg.seed, accelerator.process_index, state["step"], 1))
    accelerator.print(f"{cfg.stage}: {world} process(es) x batch {cfg.batch_size} x grad-accum {cfg.grad_accum} "
                      f"= {cfg.batch_size * world * cfg.grad_accum} samples per step, {len(clips)} clips on this rank")

    def micro_step():  # one micro-batch: its loss and kind (retrieval, next_segment or segment), no parts to log
        loss, kind = _memory_step(module, clips, text_encoder, cfg, gen, device, n, retrieval_clips, noise_gen, starts)
        return loss, kind, None

    # the optimizer loop, the same for every stage (common.run_steps): lr, micro-batches, EMA, log, checkpoints
    log = run_steps(accelerator, cfg, model, module, optimizer, ema, params, state, t_start, micro_step, export=export)
    result = {"world_size": world, "grad_accum": cfg.grad_accum}
    if log is None:  # nothing to do: the checkpoint stands as is
        return {**state, **result}
    save_checkpoint(accelerator, cfg, model, optimizer, ema, params, state, log, final=True, export=export)
    return {**state, **result}


def _memory_step(module, clips: LatentClips, text_encoder, cfg: TrainConfig, gen, device, n: int,
                 retrieval_clips: LatentClips | None = None, noise_gen: torch.Generator | None = None,
                 starts: ShotAlignedStarts | None = None):
    """One batch's (loss, kind): stage-1 retrieval (always in pretrain; a share of batches in finetune), stage-2 next
    segment, or (stage `base`) a segment denoised by G alone, with no memory. The batch is drawn here, in this order:
    the objective, the clips and split, Ω, caption dropout, t (with `gen`, on the CPU), then the noise (with
    `noise_gen`, on `device`; default: `gen`, on the CPU); `module` computes the loss. `starts`: segments drawn where
    the app starts them (within one shot, a share at a cut); None: a split drawn uniformly, cuts or not."""
    retrieval = cfg.stage == "pretrain" or (cfg.stage == "finetune"
                                            and torch.rand(1, generator=gen).item() < cfg.retrieval_share)
    source = retrieval_clips if retrieval and retrieval_clips is not None else clips
    split, drawn = None, None
    if starts is not None and not retrieval:
        split, idx, drawn = starts.draw_kind(cfg.batch_size, gen)
    else:
        idx = torch.randint(0, len(source), (cfg.batch_size,), generator=gen)
    lat = source.latents[idx.to(source.latents.device)]  # (B, C, T', H', W')
    b = lat.shape[0]
    omega, recent, reference = None, 0, None
    if retrieval:
        # Ω at its true time positions; no caption: recall must come from the memory (the inspector
        # recalls uploaded videos, which have none)
        omega = retrieval_batch(lat, cfg.num_query, gen).to(device)
        kind, frames, text = "retrieval", len(omega), text_encoder.null(b)
    else:
        if split is None:  # s = 0: the first segment, no memory
            split = draw_split(lat.shape[2], n, gen, min_history=0)
        prompts = [clips.prompts[i][split] for i in idx.tolist()]
        prompts = [p if torch.rand(1, generator=gen).item() >= cfg.caption_dropout else "" for p in prompts]
        kind, frames, text = "next_segment" if cfg.stage == "finetune" else "segment", n, text_encoder.encode(prompts)
        # the frames a segment continues, at full resolution: within a shot only, as the app gives them (a shot's
        # first segment must follow its new prompt, not the last frame); retrieval never gets them (recall is φ's)
        at_cut = drawn is not None and drawn != "inside"
        recent = cfg.recent_latents if kind == "next_segment" and not at_cut else 0
        if cfg.return_frames and drawn == "repeat" and kind == "next_segment" and split > 0:
            # the frames the repeated shot began with, as the app takes them (memory_dit.history_recent_tokens): K
            # frames ending at opening + K, or at the history's end when the shot before the cut is shorter
            opening = starts.openings(split, idx).to(lat.device)  # (B,)
            k = min(cfg.return_frames, split)
            end = (opening + cfg.return_frames).clamp(max=split)  # (B,)
            steps = end[:, None] - k + torch.arange(k, device=lat.device)  # (B, k)
            reference = torch.stack([lat[i, :, steps[i]] for i in range(b)]).to(device)  # (B, C, k, H', W')
    t = sample_train_t(b, cfg.shift, gen).to(device)
    shape = (b, lat.shape[1], frames, *lat.shape[3:])  # the denoised frames'
    if noise_gen is None:
        noise = torch.randn(shape, generator=gen).to(device)
    else:
        noise = torch.randn(shape, generator=noise_gen, device=noise_gen.device)
    loss = module(kind, lat, text.to(device), t, noise, omega=omega, split=split, segment_frames=n, recent=recent,
                  reference=reference)
    return loss, kind


def _trainable(model: PFPModel, cfg: TrainConfig) -> list[nn.Parameter]:
    params = [] if cfg.stage == "base" else list(model.memory_encoder.parameters())
    params += [p for p in model.transformer.parameters() if p.requires_grad]
    return params


def _lora_merged(model: PFPModel) -> PFPModel:
    """The model with a plain Wan transformer: the LoRA merged in (what a fine-tuned model exports)."""
    transformer = copy.deepcopy(model.transformer)
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    return replace(model, transformer=transformer)


def _text_encoder(model: PFPModel, cfg: TrainConfig):
    if cfg.text_table:
        return PrecomputedTextEncoder(caption_table_from_file(cfg.text_table))
    return model.text_encoder  # MiniLM for our configs, umT5 for a Wan folder


def _load_training_clips(model, cfg, accelerator) -> tuple[torch.Tensor, list[str]]:
    """This process's shard of the training clips: frames (N, 3, T, H, W) uint8 and storyboard texts."""
    v = model.video
    ds = clip_dataset(cfg.data, cfg.num_clips, cfg.clip_seconds, v.height, v.fps, cfg.data_seed)
    idx = shard_indices(len(ds), accelerator.process_index, accelerator.num_processes)
    if not idx:
        raise ValueError(f"--num-clips {len(ds)} leaves process {accelerator.process_index} of "
                         f"{accelerator.num_processes} without clips; use at least one clip per process")
    return load_clips(ds, idx, cfg.workers)


def _training_latents(model: PFPModel, cfg: TrainConfig, accelerator, text_encoder) -> LatentClips:
    """This process's shard of the training clips encoded by the (frozen) codec, with every latent frame's
    prompt; read from / written to `cfg.latent_cache` when set (keyed by data, shard and codec weights)."""
    v, codec = model.video, model.codec

    def build() -> tuple[torch.Tensor, list[str]]:
        frames, storyboards = _load_training_clips(model, cfg, accelerator)
        return encode_clips(codec, frames, storyboards, v.fps).latents, storyboards

    if cfg.latent_cache:
        key = dict(data=source_fingerprint(cfg.data), num_clips=cfg.num_clips, clip_seconds=cfg.clip_seconds,
                   height=v.height, fps=v.fps, data_seed=cfg.data_seed, rank=accelerator.process_index,
                   world=accelerator.num_processes, codec=module_fingerprint(codec.vae))
        latents, storyboards = cached_latents(cfg.latent_cache, key, build)
        latents = latents.to(codec.device)
    else:
        latents, storyboards = build()
    if isinstance(text_encoder, PrecomputedTextEncoder):
        storyboards = [restrict_storyboard(s, set(text_encoder.table)) if s else s for s in storyboards]
    return latent_clips(latents, storyboards, v.fps, codec.temporal_ratio)
