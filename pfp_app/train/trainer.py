"""Training: the codec, stage 1 (frame-retrieval pretraining of φ with G), stage 2 (next-segment fine-tuning),
and `base` (G alone, no memory: a small stand-in for a pretrained video model such as Wan, which the paper
starts stage 1 from).

One file, nanoGPT-style. Built on `accelerate`: the same command runs on the CPU, one GPU, or many
(`accelerate launch` / `torchrun`); bf16 autocast on GPU; EMA of weights (diffusers' EMAModel); a
time budget so a run fits a fixed window; checkpoints (safetensors + optimizer state) every N minutes
and at the end, resumable with --resume on any number of processes; a JSONL metrics log.

Several processes (`accelerate launch --num_processes N`, or `torchrun --nproc_per_node N`, which also
drives the CPU over gloo): every rank builds the same initial weights (seed `cfg.seed`), then draws its
own batches (seed `cfg.seed`, rank, step) from its own shard of the clips; DDP averages the gradients;
`--grad-accum K` accumulates K micro-batches per optimizer step. A step therefore sees
batch_size x world_size x K samples. Decisions that end a step (time budget, checkpoint due) are agreed
across ranks, so no rank waits forever in an all-reduce; only the main process writes files; and the
state folder holds the unwrapped weights, optimizer and EMA, the same for any world size.

Run folder layout:  OUT/model/ (EMA weights: a loadable PFP model folder, `--model OUT/model`)
                    OUT/state/ (raw weights, optimizer.pt, ema.pt, state.json)   OUT/metrics.jsonl
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling.flow import next_segment_batch, retrieval_batch, sample_train_t, velocity_loss
from ..model.bundle import PFPModel, build_random_model, load_model
from ..model.text_encoder import PrecomputedTextEncoder
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

STAGES = ("codec", "base", "pretrain", "finetune")


@dataclass
class TrainConfig:
    stage: str = "pretrain"
    out: str = "runs/default"
    init: str = "default"  # a config name (random init) or a model folder to start from
    data: str = "world"  # 'world', 'bank:DIR' (real-footage bank), 'A+B' (both in turn), or a folder of videos
    num_clips: int = 256
    clip_seconds: float = 20.0
    data_seed: int = 0
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 100_000
    time_budget_min: float | None = None
    checkpoint_every_min: float = 5.0
    resume: bool = False
    seed: int = 0
    num_query: int = 8  # |Ω|, retrieved latent frames per stage-1 sample
    retrieval_share: float = 0.3  # share of stage-1 batches kept during stage 2
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # stage 2: LoRA on G (peft) instead of full fine-tuning when > 0
    text_table: str | None = None  # precomputed caption embeddings (GPU machines without the encoder)
    codec_window: int = 17  # frames per codec training window (1 + 4k)
    log_every: int = 25
    workers: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step (accelerate's gradient accumulation)
    latent_cache: str | None = None  # folder of encoded training clips, shared by runs with the same data and codec
    vae: str | None = None  # a trained codec folder (AutoencoderKLWan) to use instead of the --init model's
    retrieval_data: str | None = None  # stage 2: draw its retrieval batches from this data spec instead of --data
    codec_temporal_init: str = "identity"  # a fresh codec's time taps: 'identity' (video mode = image mode) or 'random'
    codec_mix: str = "0.25,0.5,0.25"  # video-mode batch shares: world/folder clips, photo motion, real clips
    codec_decoder_width: int = 0  # stage codec: first widen the --init codec's decoder to this base width (0: keep)
    codec_freeze_encoder: bool = False  # stage codec: train the decoder alone (every latent, and so G, stays valid)
    codec_loss: str = "l1+mse"  # stage codec: 'l1+mse' (v1-v5) or 'mse' (what PSNR measures)
    lr_schedule: str = "constant"  # after warm-up: 'constant' or 'cosine' (down to 5% of --lr by the run's end)
    segment_starts: str = "shots"  # stage 2 / base: 'shots' (the app's segments, see ShotAlignedStarts) or 'uniform'
    cut_share: float = 0.5  # segment_starts 'shots': share of segment batches that start a shot
    return_share: float = 0.0  # segment_starts 'shots': share of the shot-start batches where a character returns
    recent_latents: int = 0  # stage 2: within a shot, the last k history latents beside φ's memory, at full resolution
    repeat_share: float = 0.0  # segment_starts 'shots': share of the shot-start batches that repeat an earlier prompt
    return_frames: int = 0  # stage 2: repeat batches get the repeated shot's first k latents, placed as recent ones


class MemoryTrainingModule(nn.Module):
    """G and φ in one module so DDP sees one forward: returns the flow loss of one batch."""

    def __init__(self, model: PFPModel):
        super().__init__()
        self.transformer, self.memory_encoder = model.transformer, model.memory_encoder

    def forward(self, x0, text, history, frame_positions, t, noise, recent: int = 0, reference=None):
        """x0 (B, C, n, H, W) target latents; history (B, C, Th, H, W) or None; t (B,) in [0, 1]; recent: the
        history's last `recent` latents join the memory as full-resolution tokens (memory_dit.recent_tokens);
        reference (B, C, k, H, W): latents that join it the same way, placed just before the segment (a return
        given the frames the shot it repeats began with, as the app gives them)."""
        from ..model.memory_dit import history_recent_tokens, join_memory, memory_dit_forward, recent_tokens

        memory = self.memory_encoder(history) if history is not None else None
        if recent and history is not None:
            memory = join_memory(memory, history_recent_tokens(self.transformer, history, recent))
        if reference is not None:
            k, first = reference.shape[2], frame_positions[0]
            times = first - torch.arange(k, 0, -1, dtype=frame_positions.dtype, device=frame_positions.device)
            memory = join_memory(memory, recent_tokens(self.transformer, reference, times))
        return velocity_loss(functools.partial(memory_dit_forward, self.transformer), x0, noise, t, text, memory,
                             frame_positions)


class CodecTrainingModule(nn.Module):
    """The codec's reconstruction loss of a batch of windows. loss 'l1+mse' (how v1-v5 were trained): at the
    codec's error level (L1 ~0.05, MSE ~0.008) L1's gradient is ~10x MSE's, so the codec is trained mostly for
    the median error; 'mse' trains for the mean squared error alone, the quantity PSNR measures."""

    def __init__(self, vae, freeze_encoder: bool = False, loss: str = "l1+mse"):
        super().__init__()
        _require_choice("--codec-loss", loss, CODEC_LOSSES)
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


CODEC_LOSSES = ("l1+mse", "mse")
LR_SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.05  # the cosine schedule ends at this share of --lr


def _require_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, not {value[:40]!r}")


def lr_at(step: int, cfg: TrainConfig, progress: float = 0.0) -> float:
    """Learning rate at `step`: linear warm-up, then --lr ('constant') or a cosine from --lr down to
    COSINE_FLOOR x --lr ('cosine'); progress in [0, 1] is how much of this run is done (steps of --max-steps or
    time of --time-budget-min, whichever is further: runs here are mostly time-boxed)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * warm * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def _init_model(cfg: TrainConfig) -> PFPModel:
    from ..model.bundle import MODEL_CONFIGS

    if cfg.init in MODEL_CONFIGS:
        model = build_random_model(cfg.init, seed=cfg.seed)
        model.name, model.trained = cfg.init, True
    else:
        # a Wan 2.1 folder without φ weights gets a fresh φ of the Wan config (stage 1 trains it)
        model = load_model(cfg.init, torch_dtype=torch.float32, new_memory=MODEL_CONFIGS["wan2.1-1.3b"].memory)
    if cfg.vae:  # e.g. a fresh G and φ of a config on a codec trained in an earlier phase
        from diffusers import AutoencoderKLWan

        from ..model.codec import WanLatentCodec

        vae = AutoencoderKLWan.from_pretrained(cfg.vae, use_safetensors=True, local_files_only=True, torch_dtype=torch.float32)
        if vae.config.z_dim != model.transformer.config.in_channels:
            raise ValueError(f"--vae has {vae.config.z_dim} latent channels, G takes {model.transformer.config.in_channels}")
        model.codec = WanLatentCodec(vae)
    # a fresh codec only: a --vae folder is trained already (re-initialising its time taps changes every latent)
    if cfg.stage == "codec" and cfg.init in MODEL_CONFIGS and not cfg.vae and cfg.codec_temporal_init == "identity":
        from ..model.codec import init_temporal_identity

        init_temporal_identity(model.codec.vae)
    elif cfg.codec_temporal_init not in ("identity", "random"):
        raise ValueError(f"--codec-temporal-init must be 'identity' or 'random', not {cfg.codec_temporal_init[:40]!r}")
    if cfg.codec_decoder_width:
        from ..model.codec import WanLatentCodec
        from ..model.codec_widen import decoder_width, widen_decoder

        if cfg.stage != "codec":
            raise ValueError("--codec-decoder-width widens the codec: use it with --stage codec")
        if cfg.codec_decoder_width != decoder_width(model.codec.vae):
            model.codec = WanLatentCodec(widen_decoder(model.codec.vae, cfg.codec_decoder_width, seed=cfg.seed))
    trained = {"codec": ("vae",), "base": ("transformer",)}.get(cfg.stage, ("transformer", "memory_encoder"))
    for name, m in model.modules().items():
        m.float().train(name in trained).requires_grad_(name in trained)
    if cfg.codec_freeze_encoder:
        if cfg.stage != "codec":
            raise ValueError("--codec-freeze-encoder trains the codec's decoder alone: use it with --stage codec")
        vae = model.codec.vae  # the encoder side: what makes a latent (its sampling noise comes from logvar)
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    return model


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
    frames, storyboards = load_clips(ds, idx, cfg.workers)
    return frames, storyboards


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


def _save_state(accelerator, cfg, model: PFPModel, optimizer, ema, state: dict) -> None:
    """Raw weights + optimizer (resume) and the EMA weights as a loadable model folder (use)."""
    if not accelerator.is_main_process:
        return
    out = Path(cfg.out)
    (out / "state").mkdir(parents=True, exist_ok=True)
    for name, module in model.modules().items():
        module.save_pretrained(out / "state" / name, safe_serialization=True)
    torch.save(optimizer.state_dict(), out / "state" / "optimizer.pt")
    torch.save(ema.state_dict(), out / "state" / "ema.pt")
    (out / "state" / "state.json").write_text(json.dumps(state, indent=2))
    params = _trainable(model, cfg)
    ema.store(params)
    ema.copy_to(params)
    export = model
    if cfg.lora_rank > 0 and cfg.stage == "finetune":  # a plain Wan transformer with the LoRA merged in
        import copy

        transformer = copy.deepcopy(model.transformer)
        transformer.fuse_lora(lora_scale=1.0)
        transformer.unload_lora()
        export = PFPModel(model.name, transformer, model.memory_encoder, model.codec, model.video, True)
    export.save(out / "model")
    ema.restore(params)
    (out / "model" / "training.json").write_text(json.dumps({"config": asdict(cfg), **state}, indent=2))


def _trainable(model: PFPModel, cfg: TrainConfig) -> list[nn.Parameter]:
    if cfg.stage == "codec":
        return [p for p in model.codec.vae.parameters() if p.requires_grad]
    params = [] if cfg.stage == "base" else list(model.memory_encoder.parameters())
    params += [p for p in model.transformer.parameters() if p.requires_grad]
    return params


def _load_state(cfg: TrainConfig, model: PFPModel, optimizer) -> dict:
    """Weights and optimizer from OUT/state (before `accelerator.prepare`: unwrapped, any world size)."""
    from safetensors.torch import load_file

    state_dir = Path(cfg.out) / "state"
    for name, module in model.modules().items():
        files = sorted((state_dir / name).glob("*.safetensors"))
        sd = {}
        for f in files:
            sd.update(load_file(str(f)))
        module.load_state_dict(sd)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((state_dir / "state.json").read_text())


def _load_ema(cfg: TrainConfig, ema, device) -> bool:
    path = Path(cfg.out) / "state" / "ema.pt"
    if not path.exists():  # checkpoints written before the EMA was saved: it restarts from the weights
        return False
    ema.load_state_dict(torch.load(path, weights_only=True, map_location=device))
    ema.decay = cfg.ema_decay
    return True


def _agree(accelerator, *flags: bool) -> list[bool]:
    """Flags true on any rank are true on all (one tiny all-reduce), so every rank leaves the loop,
    or checkpoints, at the same step."""
    return [bool(v) for v in _max_over_ranks(accelerator, *flags)]


def _max_over_ranks(accelerator, *values: float) -> list[float]:
    """Each value's maximum over all ranks (one tiny all-reduce; one process: the values)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], device=accelerator.device)
    return accelerator.reduce(t, "max").tolist()


def train(cfg: TrainConfig) -> dict:
    """Run one (resumable) training session; returns the final state (step, samples, losses)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}")
    if cfg.grad_accum < 1:
        raise ValueError("--grad-accum must be at least 1")
    # checked before any data is rendered or loaded (a codec run spends minutes on that first)
    _require_choice("--lr-schedule", cfg.lr_schedule, LR_SCHEDULES)
    _require_choice("--codec-loss", cfg.codec_loss, CODEC_LOSSES)
    if cfg.segment_starts not in ("shots", "uniform"):
        raise ValueError(f"--segment-starts must be 'shots' or 'uniform', not {cfg.segment_starts[:40]!r}")
    if cfg.recent_latents < 0 or (cfg.recent_latents and cfg.segment_starts != "shots"):
        raise ValueError("--recent-latents must be >= 0, and needs --segment-starts shots (recent frames are given "
                         "within a shot only; a uniform split may cross a cut)")
    if cfg.return_frames < 0 or (cfg.return_frames and (cfg.repeat_share <= 0 or cfg.segment_starts != "shots")):
        raise ValueError("--return-frames must be >= 0, and needs --repeat-share > 0 with --segment-starts shots "
                         "(they are given in the batches whose shot repeats an earlier prompt)")
    t_start = time.time()
    on_gpu = torch.cuda.is_available()
    # cpu=True without a GPU: under torchrun, accelerate then joins the ranks over gloo (MULTI_CPU)
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no",
                              gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = accelerator.num_processes
    set_seed(cfg.seed)  # the same initial weights (and LoRA adapters) on every rank
    device = accelerator.device
    model = _init_model(cfg)
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
    set_seed(cfg.seed + accelerator.process_index)  # from here on each rank draws its own randomness

    # data: rendered/decoded once per run (latents: or read from --latent-cache), kept on the device
    if cfg.stage == "codec":
        from .codec_data import CodecBatches, parse_codec_mix

        if (cfg.codec_window - 1) % model.codec.temporal_ratio:
            raise ValueError(f"--codec-window must be 1 + {model.codec.temporal_ratio}k frames (1 = image mode), "
                             f"not {cfg.codec_window}")
        torch.backends.cudnn.benchmark = True
        v = model.video
        codec_batches = CodecBatches(cfg.data, cfg.num_clips, cfg.clip_seconds, v.height, v.fps, cfg.data_seed,
                                     accelerator.process_index, accelerator.num_processes, cfg.workers, device,
                                     mix=parse_codec_mix(cfg.codec_mix))
        num_clips = codec_batches.num_clips
        trainer_module, starts = CodecTrainingModule(model.codec.vae, cfg.codec_freeze_encoder,
                                                      cfg.codec_loss), None
    else:
        text_encoder = _text_encoder(model, cfg)
        clips = _training_latents(model, cfg, accelerator, text_encoder)
        retrieval_clips = clips
        if cfg.stage == "finetune" and cfg.retrieval_data:  # e.g. captioned world for stage 2, real footage for recall

            retrieval_clips = _training_latents(model, replace(cfg, data=cfg.retrieval_data), accelerator, text_encoder)
        num_clips = len(clips)
        trainer_module = MemoryTrainingModule(model)
        starts = (ShotAlignedStarts(clips.prompts, model.video.segment_latent_frames, cfg.cut_share,
                                    cfg.return_share, cfg.repeat_share)
                  if cfg.segment_starts == "shots" and cfg.stage != "pretrain" else None)

    params = _trainable(model, cfg)
    # fused AdamW on a GPU: one kernel for all parameters instead of a few per tensor (a 13M-parameter G has
    # ~300 tensors, and launching their kernels one by one was a measurable share of a step)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    state = {"step": 0, "samples": 0, "stage": cfg.stage, "elapsed_s": 0.0}
    if cfg.resume and (Path(cfg.out) / "state" / "state.json").exists():
        state = _load_state(cfg, model, optimizer)
        accelerator.print(f"resumed {cfg.out} at step {state['step']}")
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
    if cfg.resume and state["step"] > 0 and _load_ema(cfg, ema, device):
        accelerator.print(f"resumed the EMA ({ema.optimization_step} updates)")
    trainer_module, optimizer = accelerator.prepare(trainer_module, optimizer)

    gen = torch.Generator().manual_seed(np_seed(cfg.seed, accelerator.process_index, state["step"]))
    # the flow noise is drawn where the model runs: drawn on the CPU and copied over, with a sync per step and
    # per-tensor AdamW/EMA, it left an H200 idle half of each step (benchmarks/g_throughput.py: kernel busy 48%
    # as v2 was trained, 93% now)
    noise_gen = torch.Generator(device).manual_seed(np_seed(cfg.seed, accelerator.process_index, state["step"], 1))
    log_path = Path(cfg.out) / "metrics.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
    last_ckpt, run_t0, run_samples0, losses = time.time(), time.time(), state["samples"], []
    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not accelerator.is_main_process, desc=cfg.stage)
    n = model.video.segment_latent_frames
    accelerator.print(f"{cfg.stage}: {world} process(es) x batch {cfg.batch_size} x grad-accum {cfg.grad_accum} "
                      f"= {cfg.batch_size * world * cfg.grad_accum} samples per step, {num_clips} clips on this rank")
    stop = _agree(accelerator, state["step"] >= cfg.max_steps or time.time() - t_start >= budget_s)[0]
    progress = 0.0  # share of this run done (steps of max_steps or time of the budget), for lr_at
    while not stop:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(state["step"], cfg, progress)
        micro_losses = []
        for _ in range(cfg.grad_accum):  # the last micro-batch syncs the gradients and steps the optimizer
            with accelerator.accumulate(trainer_module):
                with accelerator.autocast():
                    if cfg.stage == "codec":
                        x = codec_batches(cfg.batch_size, cfg.codec_window, gen)  # (B, 3, window, H, W)
                        loss, extra = trainer_module(x)
                        kind = "codec"
                    else:
                        loss, kind = _memory_step(trainer_module, clips, text_encoder, cfg, gen, device, n, retrieval_clips,
                                                  noise_gen, starts)
                        extra = {}
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())  # no .item() here: a sync per step would stall the GPU's queue
        ema.step(params)
        state["step"] += 1
        state["samples"] += cfg.batch_size * world * cfg.grad_accum
        losses.append(torch.stack(micro_losses).float().mean())
        bar.update(1)
        if state["step"] % cfg.log_every == 0:
            losses[-cfg.log_every:] = torch.stack(losses[-cfg.log_every:]).tolist()  # one sync per log line
            local = sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:])
            mean_loss = accelerator.reduce(torch.tensor(local, device=device), "mean").item()  # over all ranks
            if accelerator.is_main_process:
                rate = (state["samples"] - run_samples0) / max(time.time() - run_t0, 1e-6)
                rec = {"step": state["step"], "loss": mean_loss, "kind": kind, "lr": lr_at(state["step"], cfg, progress),
                       "samples": state["samples"], "samples_per_s": rate, "world_size": world,
                       "grad_accum": cfg.grad_accum, "time": time.time(), **{k: float(v) for k, v in extra.items()}}
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rate:.1f}")
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
        # progress (for --lr-schedule cosine) is the same on every rank, so their weights stay equal
        out_of_time, checkpoint_due, progress = _max_over_ranks(
            accelerator, time.time() - t_start >= budget_s, time.time() - last_ckpt > cfg.checkpoint_every_min * 60,
            max(state["step"] / cfg.max_steps, (time.time() - t_start) / budget_s))
        out_of_time, checkpoint_due = bool(out_of_time), bool(checkpoint_due)
        stop = out_of_time or state["step"] >= cfg.max_steps
        if checkpoint_due and not stop:  # the final checkpoint follows the loop
            _summarise(state, losses, state["samples"] - run_samples0, time.time() - run_t0)
            state["elapsed_s"] += time.time() - last_ckpt
            _save_state(accelerator, cfg, model, optimizer, ema, state)
            last_ckpt = time.time()
    bar.close()
    result = {"world_size": world, "grad_accum": cfg.grad_accum}
    if not losses and state["step"] > 0:  # resumed a finished run (or no time left): the checkpoint stands as is
        accelerator.print(f"nothing to do: {cfg.out} is at step {state['step']} (max {cfg.max_steps})")
        return {**state, **result}
    _summarise(state, losses, state["samples"] - run_samples0, time.time() - run_t0)
    if cfg.stage == "codec" and accelerator.is_main_process and not cfg.codec_freeze_encoder:
        ema.copy_to(params)  # the shipped codec is the EMA one: its latent statistics are measured on it
        stats_gen = torch.Generator().manual_seed(cfg.seed)
        windows = torch.cat([codec_batches(16, 17, stats_gen) for _ in range(4)])  # 64 video windows
        _set_latent_statistics(model, windows.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu(), device)
    state["elapsed_s"] += time.time() - last_ckpt
    accelerator.wait_for_everyone()
    _save_state(accelerator, cfg, model, optimizer, ema, state)
    accelerator.wait_for_everyone()  # every rank returns once the checkpoint is on disk
    return {**state, **result}


def _summarise(state: dict, losses: list[float], run_samples: int, run_seconds: float) -> None:
    """This run's throughput and mean losses (first/last 50 steps) into the state; a resumed run keeps the
    first run's first_loss."""
    for key in ("samples_per_s", "final_loss", "first_loss"):
        state.setdefault(key, None)
    if losses:
        losses = [float(v) for v in losses]  # 0-d tensors of the steps not logged yet
        state["samples_per_s"] = run_samples / max(run_seconds, 1e-6)
        state["final_loss"] = sum(losses[-50:]) / len(losses[-50:])
        if state["first_loss"] is None:
            state["first_loss"] = sum(losses[:50]) / len(losses[:50])


def _memory_step(module, clips: LatentClips, text_encoder, cfg: TrainConfig, gen, device, n: int,
                 retrieval_clips: LatentClips | None = None, noise_gen: torch.Generator | None = None,
                 starts: ShotAlignedStarts | None = None):
    """One batch: stage-1 retrieval (always in pretrain; a share of batches in finetune), stage-2 next segment,
    or (stage `base`) a segment denoised by G alone, with no memory. `gen` (CPU) draws the batch's choices and t;
    `noise_gen` (on `device`) draws the noise (default: `gen`, on the CPU). `starts`: segments drawn where the
    app starts them (within one shot, a share at a cut); None: a split drawn uniformly, cuts or not."""
    retrieval = cfg.stage == "pretrain" or (cfg.stage == "finetune"
                                            and torch.rand(1, generator=gen).item() < cfg.retrieval_share)
    source = retrieval_clips if retrieval and retrieval_clips is not None else clips
    at_cut, drawn = False, None
    if starts is not None and not retrieval:
        split, idx, drawn = starts.draw_kind(cfg.batch_size, gen)
        at_cut = drawn != "inside"
    else:
        split, idx = None, torch.randint(0, len(source), (cfg.batch_size,), generator=gen)
    lat = source.latents[idx.to(source.latents.device)]  # (B, C, T', H', W')
    b = lat.shape[0]
    if retrieval:
        # Ω at its true time positions; no caption: recall must come from the memory (the inspector
        # recalls uploaded videos, which have none)
        omega = retrieval_batch(lat, cfg.num_query, gen).to(device)
        x0, history, positions = lat[:, :, omega], lat, omega.float()
        text = text_encoder.null(b)
        kind = "retrieval"
    else:
        batch = next_segment_batch(lat, n, gen, min_history=0, split=split)  # s = 0: the first segment, no memory
        x0, positions = batch.target, batch.positions.to(device)
        history = batch.history if cfg.stage == "finetune" else None  # stage `base`: G alone
        prompts = [clips.prompts[i][batch.split] for i in idx.tolist()]
        prompts = [p if torch.rand(1, generator=gen).item() >= cfg.caption_dropout else "" for p in prompts]
        text = text_encoder.encode(prompts)
        kind = "next_segment" if cfg.stage == "finetune" else "segment"
    reference = None
    if cfg.return_frames and drawn == "repeat" and history is not None:  # the frames the repeated shot began with
        # as the app takes them (memory_dit.history_recent_tokens): K frames ending at opening + K, or at the
        # history's end when the shot before the cut is shorter
        opening = starts.openings(split, idx).to(lat.device)  # (B,)
        k = min(cfg.return_frames, split)
        end = (opening + cfg.return_frames).clamp(max=split)  # (B,)
        steps = end[:, None] - k + torch.arange(k, device=lat.device)  # (B, k)
        reference = torch.stack([lat[i, :, steps[i]] for i in range(b)]).to(device)  # (B, C, k, H', W')
    # the frames a segment continues, at full resolution: within a shot only, as the app gives them (a shot's
    # first segment must follow its new prompt, not the last frame); retrieval never gets them (recall is φ's)
    recent = cfg.recent_latents if kind == "next_segment" and not at_cut else 0
    t = sample_train_t(b, 3.0, gen).to(device)
    if noise_gen is None:
        noise = torch.randn(x0.shape, generator=gen).to(device)
    else:
        noise = torch.randn(x0.shape, generator=noise_gen, device=noise_gen.device)
    return module(x0, text.to(device), history, positions, t, noise, recent, reference), kind


@torch.no_grad()
def _set_latent_statistics(model: PFPModel, frames_u8: torch.Tensor, device) -> None:
    """Per-channel mean/std of the trained codec's latents, stored in the VAE config (as Wan's are)."""
    from ..model.codec import WanLatentCodec

    vae = model.codec.vae.eval()
    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    raw = encode_clips(WanLatentCodec(vae), frames_u8[:64], [""] * min(64, len(frames_u8)), model.video.fps).latents
    mean, std = raw.mean(dim=(0, 2, 3, 4)), raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    model.codec = WanLatentCodec(vae)
    vae.train()
