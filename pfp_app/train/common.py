"""What the two training loops share: the options (TrainConfig, each with its help), the model a run starts from,
the accelerator, the learning-rate schedule, the optimizer, checkpoints (save, resume, EMA), the time budget agreed
across ranks, the metrics log and the optimizer loop itself (`run_steps`). The loops: codec_loop.py (the codec) and
memory_loop.py (base, pretrain, finetune), each with its own module, batches and what follows its last step.

Built on `accelerate`: the same command runs on the CPU, one GPU, or many (`accelerate launch` / `torchrun`); bf16
autocast on GPU; EMA of weights (diffusers' EMAModel); a time budget so a run fits a fixed window; checkpoints
(safetensors + optimizer state) every N minutes and at the end, resumable with --resume on any number of processes;
a JSONL metrics log.

Several processes (`accelerate launch --num_processes N`, or `torchrun --nproc_per_node N`, which also drives the
CPU over gloo): every rank builds the same initial weights (seed `cfg.seed`), then draws its own batches (seed
`cfg.seed`, rank, step) from its own shard of the clips; DDP averages the gradients; `--grad-accum K` accumulates K
micro-batches per optimizer step. A step therefore sees batch_size x world_size x K samples. Decisions that end a
step (time budget, checkpoint due) are agreed across ranks, so no rank waits forever in an all-reduce; only the main
process writes files; and the state folder holds the unwrapped weights, optimizer and EMA, the same for any world
size.

Run folder layout:  OUT/model/ (EMA weights: a loadable PFP model folder, `--model OUT/model`)
                    OUT/state/ (raw weights, optimizer.pt, ema.pt, state.json)   OUT/metrics.jsonl
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..model.bundle import PFPModel, build_random_model, load_model

STAGES = ("codec", "base", "pretrain", "finetune")
LR_SCHEDULES = ("constant", "cosine")
CODEC_LOSSES = ("l1+mse", "mse")
COSINE_FLOOR = 0.05  # the cosine schedule ends at this share of --lr


def option(default, help: str):
    """A TrainConfig field and its command-line help (`python -m pfp_app train --help`; train/cli.py builds the
    options from the fields)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every training option: field `max_steps` is `python -m pfp_app train --max-steps`, its help beside it."""

    stage: str = option("pretrain", "codec (the VAE), base (G alone), pretrain (stage 1: frame retrieval), "
                                    "finetune (stage 2)")
    out: str = option("runs/default", "output folder: checkpoints, metrics.jsonl and the loadable model in OUT/model")
    init: str = option("default", "where to start: a config name (random weights: default, small, tiny) or a model "
                                  "folder")
    data: str = option("world", "'world' (the procedural storyboard world), 'bank:DIR' (the real-footage bank), 'A+B' "
                                "(both in turn) or a folder of videos (optional NAME.txt captions)")
    num_clips: int = option(256, "training clips to render or read")
    clip_seconds: float = option(20.0, "length of each training clip in seconds")
    data_seed: int = option(0, "seed of the training clips (evaluate uses other seeds)")
    batch_size: int = option(8, "samples per micro-batch (per process)")
    lr: float = option(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_steps: int = option(100, "linear learning-rate warm-up steps")
    max_steps: int = option(100_000, "stop after this many optimizer steps")
    time_budget_min: float | None = option(None, "stop (and save) after this many minutes of training")
    checkpoint_every_min: float = option(5.0, "minutes between checkpoints (for --resume)")
    resume: bool = option(False, "continue from the last checkpoint in --out")
    seed: int = option(0, "seed of initialisation, noise and batch order")
    shift: float = option(3.0, "stages base, pretrain, finetune: timestep shift of the noise levels trained on (t is "
                               "logit-normal, shifted toward noise as Wan's sampling schedule is; 1: no shift)")
    num_query: int = option(8, "stage 1: latent frames retrieved per sample (|Ω|)")
    retrieval_share: float = option(0.3, "stage 2: share of batches that keep the stage-1 retrieval objective")
    caption_dropout: float = option(0.1, "share of samples trained with an empty caption")
    ema_decay: float = option(0.999, "decay of the exponential moving average of the weights")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory, slower)")
    lora_rank: int = option(0, "stage 2: LoRA rank on G instead of full fine-tuning (0: off)")
    text_table: str | None = option(None, "precomputed caption embeddings (.safetensors from `captions`) instead of "
                                          "the text encoder")
    codec_window: int = option(17, "frames per codec training window (1 + 4k)")
    log_every: int = option(25, "steps between lines in metrics.jsonl")
    workers: int = option(0, "data-loader worker processes")
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)")
    latent_cache: str | None = option(None, "folder of encoded training clips, reused by runs with the same data and "
                                            "codec")
    vae: str | None = option(None, "a trained codec folder (AutoencoderKLWan) to use instead of the --init model's")
    retrieval_data: str | None = option(None, "stage 2: data spec of the retrieval batches (default: --data)")
    codec_temporal_init: str = option("identity", "a fresh codec's time taps: 'identity' (video mode = image mode) or "
                                                  "'random'")
    codec_mix: str = option("0.25,0.5,0.25", "video-mode codec batches: shares of world (or folder) clips, photo "
                                             "motion and real clips")
    codec_decoder_width: int = option(0, "stage codec: widen the --init codec's decoder to this base width first, "
                                         "keeping what it computes and every latent (0: keep its width)")
    codec_freeze_encoder: bool = option(False, "stage codec: train the decoder alone; every latent stays as it is, so "
                                               "G and φ trained on the --init codec's latents need no new training")
    codec_loss: str = option("l1+mse", "stage codec: 'l1+mse' (L1 plus squared error, as v1-v5 were trained) or "
                                       "'mse' (the squared error alone: what PSNR measures)")
    lr_schedule: str = option("constant", "after the warm-up: 'constant' or 'cosine' (from --lr down to 5% of it at "
                                          "the run's end: --max-steps or --time-budget-min, whichever comes first)")
    segment_starts: str = option("shots", "stage 2 / base: 'shots' draws only segments the app generates (within one "
                                          "shot, a share starting a shot) or 'uniform' (any split, across cuts too: "
                                          "models before v6)")
    cut_share: float = option(0.5, "with --segment-starts shots: share of segment batches that start a shot (or the "
                                   "film)")
    return_share: float = option(0.0, "with --segment-starts shots: share of the shot-start batches in which a "
                                      "character comes back after an absence (the memory must give back how it "
                                      "looked)")
    recent_latents: int = option(0, "stage 2: within a shot, G also sees the history's last K latent frames at full "
                                    "resolution (the exported model generates with them; 0: φ's memory alone)")
    repeat_share: float = option(0.0, "with --segment-starts shots: share of the shot-start batches whose shot "
                                      "repeats an earlier shot's prompt (the app's return)")
    return_frames: int = option(0, "stage 2: those repeat batches also give G the first K latent frames of the shot "
                                   "they repeat, placed where a continued shot's recent frames sit (the exported "
                                   "model gives them at every return: pipeline return_latents, from the start, as "
                                   "recent; needs --repeat-share)")


def require_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, not {value[:40]!r}")


def check_config(cfg: TrainConfig) -> None:
    """Refuse a bad option, or one meant for another stage, before any data is rendered or loaded (a codec run
    spends minutes on that first)."""
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}")
    if cfg.grad_accum < 1:
        raise ValueError("--grad-accum must be at least 1")
    require_choice("--lr-schedule", cfg.lr_schedule, LR_SCHEDULES)
    require_choice("--codec-loss", cfg.codec_loss, CODEC_LOSSES)
    if cfg.segment_starts not in ("shots", "uniform"):
        raise ValueError(f"--segment-starts must be 'shots' or 'uniform', not {cfg.segment_starts[:40]!r}")
    if cfg.recent_latents < 0 or (cfg.recent_latents and cfg.segment_starts != "shots"):
        raise ValueError("--recent-latents must be >= 0, and needs --segment-starts shots (recent frames are given "
                         "within a shot only; a uniform split may cross a cut)")
    if cfg.return_frames < 0 or (cfg.return_frames and (cfg.repeat_share <= 0 or cfg.segment_starts != "shots")):
        raise ValueError("--return-frames must be >= 0, and needs --repeat-share > 0 with --segment-starts shots "
                         "(they are given in the batches whose shot repeats an earlier prompt)")
    if cfg.codec_temporal_init not in ("identity", "random"):
        raise ValueError(f"--codec-temporal-init must be 'identity' or 'random', not {cfg.codec_temporal_init[:40]!r}")
    if cfg.codec_decoder_width and cfg.stage != "codec":
        raise ValueError("--codec-decoder-width widens the codec: use it with --stage codec")
    if cfg.codec_freeze_encoder and cfg.stage != "codec":
        raise ValueError("--codec-freeze-encoder trains the codec's decoder alone: use it with --stage codec")


def lr_at(step: int, cfg: TrainConfig, progress: float = 0.0) -> float:
    """Learning rate at `step`: linear warm-up, then --lr ('constant') or a cosine from --lr down to
    COSINE_FLOOR x --lr ('cosine'); progress in [0, 1] is how much of this run is done (steps of --max-steps or
    time of --time-budget-min, whichever is further: runs here are mostly time-boxed)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * warm * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def make_accelerator(cfg: TrainConfig):
    """accelerate's Accelerator: bf16 autocast on a GPU; without one cpu=True (under torchrun, accelerate then joins
    the ranks over gloo: MULTI_CPU). Then the same seed on every rank: the same initial weights (and LoRA adapters)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no",
                              gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(cfg.seed)
    return accelerator


def seed_this_rank(cfg: TrainConfig, accelerator) -> None:
    """From here on each rank draws its own randomness."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed + accelerator.process_index)


def build_model(cfg: TrainConfig) -> PFPModel:
    """The model a run starts from, in float32: a config's random weights (seed cfg.seed) or a model folder
    (--init), on the codec of --vae when given. The loop then says what it trains (`set_trained`)."""
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
    return model


def set_trained(model: PFPModel, names: tuple[str, ...]) -> None:
    """Every part in float32; the parts named (of transformer, memory_encoder, vae) train, the others are frozen."""
    for name, m in model.modules().items():
        m.float().train(name in names).requires_grad_(name in names)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, device) -> torch.optim.Optimizer:
    # fused AdamW on a GPU: one kernel for all parameters instead of a few per tensor (a 13M-parameter G has
    # ~300 tensors, and launching their kernels one by one was a measurable share of a step)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                             fused=device.type == "cuda")


def start_or_resume(accelerator, cfg: TrainConfig, model: PFPModel, optimizer, params: list[nn.Parameter]):
    """(state, EMA of params): a fresh run's, or with --resume the weights, optimizer, EMA and state saved in
    OUT/state. Call it before `accelerator.prepare` (the saved weights are unwrapped, from any world size)."""
    from diffusers.training_utils import EMAModel

    state = {"step": 0, "samples": 0, "stage": cfg.stage, "elapsed_s": 0.0}
    if cfg.resume and (Path(cfg.out) / "state" / "state.json").exists():
        state = _load_state(cfg, model, optimizer)
        accelerator.print(f"resumed {cfg.out} at step {state['step']}")
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
    if cfg.resume and state["step"] > 0 and _load_ema(cfg, ema, accelerator.device):
        accelerator.print(f"resumed the EMA ({ema.optimization_step} updates)")
    return state, ema


def _load_state(cfg: TrainConfig, model: PFPModel, optimizer) -> dict:
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


def save_checkpoint(accelerator, cfg: TrainConfig, model: PFPModel, optimizer, ema, params: list[nn.Parameter],
                    state: dict, log: RunLog, final: bool = False,
                    export: Callable[[PFPModel], PFPModel] | None = None) -> None:
    """Raw weights + optimizer + EMA (resume) and the EMA weights as a loadable model folder (use), written by the
    main process; `export` turns the model (EMA weights in place) into the one to save (stage 2's LoRA merged in).
    final: every rank waits for the others before, and returns once the checkpoint is on disk."""
    state["elapsed_s"] += time.time() - log.last_checkpoint
    if final:
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(cfg.out)
        (out / "state").mkdir(parents=True, exist_ok=True)
        for name, module in model.modules().items():
            module.save_pretrained(out / "state" / name, safe_serialization=True)
        torch.save(optimizer.state_dict(), out / "state" / "optimizer.pt")
        torch.save(ema.state_dict(), out / "state" / "ema.pt")
        (out / "state" / "state.json").write_text(json.dumps(state, indent=2))
        ema.store(params)
        ema.copy_to(params)
        (export(model) if export is not None else model).save(out / "model")
        ema.restore(params)
        (out / "model" / "training.json").write_text(json.dumps({"config": asdict(cfg), **state}, indent=2))
    if final:
        accelerator.wait_for_everyone()
    log.last_checkpoint = time.time()


def run_steps(accelerator, cfg: TrainConfig, model: PFPModel, module: nn.Module, optimizer, ema,
              params: list[nn.Parameter], state: dict, t_start: float,
              micro_step: Callable[[], tuple[torch.Tensor, str, dict | None]],
              export: Callable[[PFPModel], PFPModel] | None = None) -> RunLog | None:
    """The optimizer loop of every stage, until --max-steps or the time budget (counted from `t_start`): each step
    sets the learning rate, runs --grad-accum micro-batches (`micro_step()`, under autocast: one micro-batch's loss,
    its kind and the parts to log or None; the last micro-batch syncs the gradients and steps the optimizer), updates
    the EMA, logs, and writes a checkpoint when one is due (`export` as in save_checkpoint). The final checkpoint is
    the caller's: this returns the run's log once its losses are summarised into `state`, None when there was nothing
    to do (a finished run resumed, or no time left: the checkpoint stands as is)."""
    log = RunLog(accelerator, cfg, state, t_start)
    stop, progress = log.over(state), 0.0  # progress: share of this run done, for lr_at
    while not stop:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(state["step"], cfg, progress)
        micro_losses = []
        for _ in range(cfg.grad_accum):  # the last micro-batch syncs the gradients and steps the optimizer
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss, kind, parts = micro_step()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
        ema.step(params)
        state["step"] += 1
        state["samples"] += cfg.batch_size * accelerator.num_processes * cfg.grad_accum
        log.record(state, torch.stack(micro_losses).float().mean(), kind, lr_at(state["step"], cfg, progress), parts)
        stop, checkpoint_due, progress = log.check(state)
        if checkpoint_due and not stop:  # the final checkpoint follows the loop
            log.summarise(state)
            save_checkpoint(accelerator, cfg, model, optimizer, ema, params, state, log, export=export)
    log.close()
    if not log.losses and state["step"] > 0:  # resumed a finished run (or no time left): the checkpoint stands as is
        accelerator.print(f"nothing to do: {cfg.out} is at step {state['step']} (max {cfg.max_steps})")
        return None
    log.summarise(state)
    return log


def agree(accelerator, *flags: bool) -> list[bool]:
    """Flags true on any rank are true on all (one tiny all-reduce), so every rank leaves the loop,
    or checkpoints, at the same step."""
    return [bool(v) for v in max_over_ranks(accelerator, *flags)]


def max_over_ranks(accelerator, *values: float) -> list[float]:
    """Each value's maximum over all ranks (one tiny all-reduce; one process: the values)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], device=accelerator.device)
    return accelerator.reduce(t, "max").tolist()


class RunLog:
    """This run's clock and record: the time budget and checkpoint interval (agreed across ranks), each step's loss,
    the progress bar and OUT/metrics.jsonl (written by the main process)."""

    def __init__(self, accelerator, cfg: TrainConfig, state: dict, t_start: float):
        from tqdm.auto import tqdm

        self.accelerator, self.cfg, self.t_start = accelerator, cfg, t_start
        self.path = Path(cfg.out) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
        self.last_checkpoint, self.run_t0, self.run_samples0 = time.time(), time.time(), state["samples"]
        self.losses: list = []  # per step: 0-d tensors, turned into floats a log line at a time
        self.bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not accelerator.is_main_process,
                        desc=cfg.stage)

    def over(self, state: dict) -> bool:
        """Before the first step: is there nothing to do (--max-steps reached or no time left, on any rank)?"""
        return agree(self.accelerator, state["step"] >= self.cfg.max_steps
                     or time.time() - self.t_start >= self.budget_s)[0]

    def record(self, state: dict, loss: torch.Tensor, kind: str, lr: float, extra: dict | None = None) -> None:
        """A finished optimizer step's mean loss (no .item() here: a sync per step would stall the GPU's queue);
        every --log-every steps a line with the loss averaged over the steps and the ranks."""
        cfg, accelerator = self.cfg, self.accelerator
        self.losses.append(loss)
        self.bar.update(1)
        if state["step"] % cfg.log_every:
            return
        self.losses[-cfg.log_every:] = torch.stack(self.losses[-cfg.log_every:]).tolist()  # one sync per log line
        local = sum(self.losses[-cfg.log_every:]) / len(self.losses[-cfg.log_every:])
        mean_loss = accelerator.reduce(torch.tensor(local, device=accelerator.device), "mean").item()  # all ranks
        if accelerator.is_main_process:
            rate = (state["samples"] - self.run_samples0) / max(time.time() - self.run_t0, 1e-6)
            rec = {"step": state["step"], "loss": mean_loss, "kind": kind, "lr": lr, "samples": state["samples"],
                   "samples_per_s": rate, "world_size": accelerator.num_processes, "grad_accum": cfg.grad_accum,
                   "time": time.time(), **{k: float(v) for k, v in (extra or {}).items()}}
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rate:.1f}")
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def check(self, state: dict) -> tuple[bool, bool, float]:
        """After a step: (stop, checkpoint due, progress), the same on every rank. progress in [0, 1] is the share
        of the run done (steps of --max-steps or time of the budget), for the cosine schedule: being the same on
        every rank, it keeps their weights equal."""
        now = time.time()
        out_of_time, due, progress = max_over_ranks(self.accelerator, now - self.t_start >= self.budget_s,
                                                    now - self.last_checkpoint > self.cfg.checkpoint_every_min * 60,
                                                    max(state["step"] / self.cfg.max_steps,
                                                        (now - self.t_start) / self.budget_s))
        return bool(out_of_time) or state["step"] >= self.cfg.max_steps, bool(due), progress

    def summarise(self, state: dict) -> None:
        """This run's throughput and mean losses (first/last 50 steps) into the state; a resumed run keeps the
        first run's first_loss."""
        for key in ("samples_per_s", "final_loss", "first_loss"):
            state.setdefault(key, None)
        if self.losses:
            losses = [float(v) for v in self.losses]  # 0-d tensors of the steps not logged yet
            state["samples_per_s"] = (state["samples"] - self.run_samples0) / max(time.time() - self.run_t0, 1e-6)
            state["final_loss"] = sum(losses[-50:]) / len(losses[-50:])
            if state["first_loss"] is None:
                state["first_loss"] = sum(losses[:50]) / len(losses[:50])

    def close(self) -> None:
        self.bar.close()
