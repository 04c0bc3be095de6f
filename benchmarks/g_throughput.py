"""Where G's training time goes (issue 13): samples/s, model FLOPs utilisation and GPU kernel time per step of
the trainer's own memory step (`pfp_app.train.memory_loop._memory_step`), for several batch sizes and for the
trainer loop as shipped with model v2 (noise drawn on the CPU, a `.item()` sync per step, per-tensor AdamW and
EMA) against the loop now (noise on the device, no per-step sync, fused AdamW, foreach EMA).

    python benchmarks/g_throughput.py --out benchmarks/results/g_throughput_h200.json        # CUDA GPU, ~2 min
    python benchmarks/g_throughput.py --tiny --out /tmp/gt.json                              # CPU smoke test

Data are random latents of the default model's shape (64 clips of 20 s: (64, 32, 41, 32, 32)) with captions
from a random caption table: throughput does not depend on what the latents show, and no time goes to
rendering. G and φ are `default`'s, randomly initialised, trained in bf16 autocast as the trainer does.
Per configuration: `--warmup` steps, then `--steps` timed steps (CUDA synchronised at both ends), then a
profile of 3 steps (torch.profiler): the summed device-kernel time / wall time is "kernel busy", the share of
the step in which the GPU computes anything. FLOPs per step come from torch's FlopCounterMode on one step
(forward and backward: matmuls, convolutions and attention); MFU = FLOPs/s over the GPU's dense bf16 peak
(`--peak-tflops`, 989 for an H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def fake_clips(model, num_clips: int, seconds: float, device, gen):
    """Random latents (N, C, T', H', W') with one random caption per clip, as LatentClips."""
    from pfp_app.train.data import LatentClips

    v = model.video
    t_lat = 1 + int(seconds * v.fps - 1) // model.codec.temporal_ratio
    h = v.height // model.codec.spatial_ratio
    c = model.transformer.config.in_channels
    latents = torch.randn(num_clips, c, t_lat, h, h, generator=gen).to(device)
    prompts = [[f"caption {i % 16}"] * t_lat for i in range(num_clips)]
    return LatentClips(latents, prompts)


def caption_table(text_dim: int, max_tokens: int, gen) -> dict[str, torch.Tensor]:
    return {f"caption {i}": torch.randn(max_tokens, text_dim, generator=gen) for i in range(16)}


class Loop:
    """One optimizer step of the trainer's memory stages, as shipped with v2 (`legacy`) or as now."""

    def __init__(self, model, cfg, device, legacy: bool):
        from diffusers.training_utils import EMAModel

        from pfp_app.train.memory_loop import MemoryTrainingModule, _trainable

        self.module = MemoryTrainingModule(model).to(device).train()
        self.params = _trainable(model, cfg)
        fused = device.type == "cuda" and not legacy
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.99), fused=fused,
                                     foreach=None if fused else not legacy)
        self.ema = EMAModel(self.params, decay=cfg.ema_decay, foreach=not legacy)
        self.cfg, self.device, self.legacy = cfg, device, legacy
        self.gen = torch.Generator().manual_seed(0)
        self.noise_gen = None if legacy else torch.Generator(device).manual_seed(1)

    def step(self, clips, text_encoder, n: int):
        from pfp_app.train.memory_loop import _memory_step

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss, _ = _memory_step(self.module, clips, text_encoder, self.cfg, self.gen, self.device, n, clips,
                                   self.noise_gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.params)
        return loss.item() if self.legacy else loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(loop: Loop, clips, text_encoder, n: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loop.step(clips, text_encoder, n)
    return float(counter.get_total_flops())


def kernel_busy(loop: Loop, clips, text_encoder, n: int, steps: int = 3) -> tuple[float, list[tuple[str, float]]]:
    """(device-kernel time / wall time over `steps` steps, top kernels by device time in ms per step)."""
    if loop.device.type != "cuda":
        return float("nan"), []
    from torch.profiler import ProfilerActivity, profile

    sync(loop.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            loop.step(clips, text_encoder, n)
        sync(loop.device)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in events) / 1e6  # us -> s
    top = sorted(((e.key[:70], e.self_device_time_total / 1e3 / steps) for e in events), key=lambda kv: -kv[1])[:12]
    return busy / wall, top


def measure(model, base_cfg, device, batch: int, stage: str, legacy: bool, args, clips, text_encoder) -> dict:
    cfg = replace(base_cfg, batch_size=batch, stage=stage, retrieval_share=0.0)  # pretrain: retrieval only; finetune: next segment only
    n = model.video.segment_latent_frames
    loop = Loop(model, cfg, device, legacy)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # peak GiB of this configuration alone
    for _ in range(args.warmup):
        loop.step(clips, text_encoder, n)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loop.step(clips, text_encoder, n)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    flops = step_flops(loop, clips, text_encoder, n)
    busy, top = kernel_busy(loop, clips, text_encoder, n)
    peak = args.peak_tflops * 1e12
    return {"batch": batch, "stage": {"pretrain": "retrieval (stage 1)", "finetune": "next segment (stage 2)"}[stage], "loop": "as v2 (legacy)" if legacy else "now", "s_per_step": dt,
            "samples_per_s": batch / dt, "tflop_per_step": flops / 1e12, "mfu": flops / dt / peak if device.type == "cuda" else None,
            "kernel_busy": busy, "top_kernels_ms_per_step": top,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def format_table(res: dict) -> str:
    lines = [f"### G training throughput: {res['device']}, model `{res['model']}`, {res['date']}", "",
             f"Command: `{res['command']}`", "",
             "| stage | loop | batch | samples/s | s/step | TFLOP/step | MFU | kernel busy | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "–"
        busy = f"{100 * r['kernel_busy']:.0f}%" if r["kernel_busy"] == r["kernel_busy"] else "–"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "–"
        lines.append(f"| {r['stage']} | {r['loop']} | {r['batch']} | {r['samples_per_s']:.0f} | {r['s_per_step']:.3f} | "
                     f"{r['tflop_per_step']:.2f} | {mfu} | {busy} | {mem} |")
    tops = [r for r in res["rows"] if r["top_kernels_ms_per_step"]]
    if tops:
        r = max(tops, key=lambda r: r["samples_per_s"])
        lines += ["", f"Top device kernels, ms per step ({r['stage']}, batch {r['batch']}, loop {r['loop']}):", "",
                  "| kernel | ms/step |", "|---|---|"]
        lines += [f"| `{k}` | {ms:.1f} |" for k, ms in r["top_kernels_ms_per_step"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="a config name (random weights)")
    ap.add_argument("--batches", default="96,192,384")
    ap.add_argument("--stages", default="pretrain,finetune")
    ap.add_argument("--legacy-batch", type=int, default=96, help="also time the v2 loop at this batch (0: no)")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny config, batch 2, 2 steps")
    args = ap.parse_args(argv)
    if args.tiny:
        args.model, args.batches, args.stages, args.legacy_batch, args.steps, args.warmup = "tiny", "2", "finetune", 2, 2, 1
    from pfp_app.model.bundle import build_random_model
    from pfp_app.model.text_encoder import PrecomputedTextEncoder
    from pfp_app.train.trainer import TrainConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_random_model(args.model, seed=0)
    for name, m in model.modules().items():
        m.float().requires_grad_(name in ("transformer", "memory_encoder"))
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    clips = fake_clips(model, 8 if args.tiny else 64, 20.0, device, gen)
    text_encoder = PrecomputedTextEncoder(caption_table(model.transformer.config.text_dim, model.video.text_max_tokens, gen))
    base_cfg = TrainConfig(caption_dropout=0.1)
    out = Path(args.out)
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
           "model": args.model, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "command": "python benchmarks/g_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": []}
    plan = [(b, s, False) for s in args.stages.split(",") for b in map(int, args.batches.split(","))]
    if args.legacy_batch:
        plan = [(args.legacy_batch, s, True) for s in args.stages.split(",")] + plan
    for batch, stage, legacy in plan:
        try:
            row = measure(model, base_cfg, device, batch, stage, legacy, args, clips, text_encoder)
        except torch.OutOfMemoryError:
            row = {"batch": batch, "stage": stage, "loop": "legacy" if legacy else "now", "error": "OOM"}
            torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in row.items() if k != "top_kernels_ms_per_step"}), flush=True)
        if "error" not in row:
            res["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        out.with_suffix(".md").write_text(format_table(res))
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
