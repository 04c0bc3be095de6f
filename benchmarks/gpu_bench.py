"""GPU benchmark of the consumer-GPU runtime (issue 5): step time, memory cost, φ cost, VRAM per profile.

    python benchmarks/gpu_bench.py --shapes 1.3b,14b --out results.json   # CUDA GPU: < 8 min on an H100
    python benchmarks/gpu_bench.py --tiny                                 # CPU smoke test (tests/test_bench_smoke.py)

Random weights (N(0, 0.02), never zeros) in the exact Wan 2.1 shapes: the DiT from MODEL_CONFIGS, the
real Wan VAE (`AutoencoderKLWan()`), an umT5-XXL-shaped text encoder, our φ. 480x832 at 16 fps, a
segment of 9 latent frames (1, 16, 9, 60, 104) and 20 s of history (80 latent frames). Reported:
  (a) seconds per denoising step: segment alone, + φ memory at each rate, + the full uncompressed history;
  (b) φ: compressing 20 s of history, and adding one segment to an existing memory (encode_incremental);
  (c) the whole pipeline (text encoder, φ, DiT steps, VAE decode) under each runtime profile: peak VRAM
      and step time relative to `resident`, through pfp_app.runtime.apply.apply_profile exactly as the app runs.
Every measurement is time-boxed (--budget-s in all), OOMs are recorded as 'OOM', and the JSON in --out is
rewritten after every measurement, so a timeout still leaves data. The markdown tables are printed last.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

GiB = 1024**3
UMT5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=256384,
                feed_forward_proj="gated-gelu")
RATES = ("4x4x2", "2x2x2", "2x2x1")
PROFILE_ORDER = ("resident", "offload+fp8", "fp8", "offload", "lowvram")
TARGETS = {"memory_ratio_4x4x2": 1.5, "phi_encode_s": 0.5, "phi_add_segment_s": 0.1, "offload_fp8_peak_gib": 4.0,
           "offload_fp8_step_ratio": 1.35}
REFERENCE = {"1.3b": {"segment": 0.186, "4x4x2": 0.279, "full": 7.56},
             "14b": {"resident_step": 1.58, "resident_peak_gib": 53.5, "offload+fp8_step": 2.08,
                     "offload+fp8_peak_gib": 3.1}}


@dataclass(frozen=True)
class Shape:
    label: str
    config: str  # MODEL_CONFIGS name
    height: int
    width: int
    fps: int
    segment_latents: int
    history_seconds: float
    text: dict = field(default_factory=lambda: dict(UMT5_XXL))  # UMT5Config kwargs
    text_tokens: int = 512
    vae: dict | None = None  # AutoencoderKLWan kwargs; None: Wan's real VAE (the default config)
    full_history: bool = False  # also time the uncompressed history as tokens


SHAPES = {
    "1.3b": Shape("1.3b", "wan2.1-1.3b", 480, 832, 16, 9, 20.0, full_history=True),
    "14b": Shape("14b", "wan2.1-14b", 480, 832, 16, 9, 20.0),
    "tiny": Shape("tiny", "tiny", 64, 64, 8, 3, 4.0,
                  text=dict(d_model=384, d_ff=256, num_layers=2, num_heads=4, d_kv=32, vocab_size=1000,
                            feed_forward_proj="gated-gelu"), text_tokens=16,
                  vae=dict(base_dim=8, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 8, latents_std=[1.0] * 8),
                  full_history=True),
}


# ---- plumbing: clock, device, results ----------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32  # several CPU kernels lack bf16
        self.t0 = time.perf_counter()
        self.results: dict = {"meta": {}, "phi": {}, "steps": {}, "profiles": {}, "errors": []}
        self.refs: dict[str, torch.Tensor] = {}  # resident DiT outputs, to check the other profiles against

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def save(self) -> None:
        if not self.args.out:
            return
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(out)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def cleanup(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            if hasattr(torch._C, "_host_emptyCache"):
                torch._C._host_emptyCache()  # give cached pinned memory back between profiles

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None

    def time_calls(self, fn, warmup: int, reps: int, budget_s: float, min_reps: int = 1) -> dict:
        """Median seconds per call of fn() (CUDA events on the GPU), after warm-up; fewer calls when slow."""
        budget_s = min(budget_s, max(self.left(), 0.0))
        if self.args.tiny:  # smoke test: the numbers mean nothing, the code paths do
            warmup, reps, min_reps = 1, 1, 1
        t = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - t
        n_warm = 1
        while n_warm < warmup and first * (n_warm + 1 + reps) <= budget_s:
            fn()
            n_warm += 1
        self.sync()
        spent = time.perf_counter() - t
        reps = max(min_reps, min(reps, int((budget_s - spent) / max(first, 1e-6))))
        if first * reps > max(self.left(), 0.0):
            reps = 1
        times = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t1 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t1)
        return {"median_s": statistics.median(times), "times_s": [round(x, 5) for x in times], "warmup": n_warm,
                "first_s": round(first, 4)}

    @contextmanager
    def guard(self, where: str, record: dict):
        """Run a measurement; an OOM becomes record['error'] = 'OOM', any other failure its message."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - one failed measurement must not end the run
            oom = isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()
            record["error"] = "OOM" if oom else f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            self.results["errors"].append({"where": where, "error": record["error"],
                                           "trace": traceback.format_exc(limit=6)[-2000:]})
            self.log(f"{where}: {record['error']}")
            del err
        finally:
            self.cleanup()
            self.save()


# ---- random models in the exact shapes ---------------------------------------------------------------------

@torch.no_grad()
def materialize_(module: nn.Module, device, generator: torch.Generator, dtype=torch.bfloat16) -> nn.Module:
    """Give every meta parameter storage on `device` in `dtype`, filled with N(0, 0.02) (never zeros; ties kept)."""
    memo: dict[int, nn.Parameter] = {}
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in memo:
                t = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype, device=device)
                t.normal_(0.0, 0.02, generator=generator)
                memo[id(p)] = nn.Parameter(t, requires_grad=False)
            mod._parameters[name] = memo[id(p)]
    return module.to(device)  # buffers (Wan's rope tables) were built for real on the CPU


def _generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def build_transformer(shape: Shape, device, seed: int = 0):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from pfp_app.model.memory_dit import enable_memory_blocks
    from pfp_app.model.bundle import MODEL_CONFIGS
    from pfp_app.runtime.offload import cast_for_compute

    with init_empty_weights(include_buffers=False):
        # the app's own blocks: memory tokens at t = 0 through the two-group timestep path
        tr = enable_memory_blocks(WanTransformer3DModel(**MODEL_CONFIGS[shape.config].transformer))
    materialize_(tr, device, _generator(device, seed))
    return cast_for_compute(tr, torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32).eval()


def build_text_encoder(shape: Shape, device, seed: int = 1):
    """An umT5-shaped encoder with random weights behind the app's own text-encoder class (random token ids)."""
    from accelerate import init_empty_weights
    from transformers import UMT5Config, UMT5EncoderModel

    from pfp_app.model.text_encoder import _HFTextEncoder

    with init_empty_weights(include_buffers=False):
        model = UMT5EncoderModel(UMT5Config(**shape.text))
    materialize_(model, device, _generator(device, seed),
                 torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)

    class RandomTokens:  # stands in for the umT5 tokenizer (not shipped): full-length random ids
        def __call__(self, texts, max_length=None, **_):
            ids = torch.randint(0, shape.text["vocab_size"], (len(texts), max_length), generator=torch.Generator().manual_seed(seed))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return _HFTextEncoder(RandomTokens(), model, shape.text_tokens, device)


def build_vae(shape: Shape, device):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    with torch.device(device):
        return AutoencoderKLWan(**(shape.vae or {})).eval()


def build_phi(shape: Shape, rate: str, device, dtype, transformer=None):
    from pfp_app.model.memory_encoder import MemoryEncoder
    from pfp_app.model.bundle import MODEL_CONFIGS

    cfg = MODEL_CONFIGS[shape.config]
    t = cfg.transformer
    torch.manual_seed(3)
    enc = MemoryEncoder(latent_channels=t["in_channels"], hidden_dim=t["num_attention_heads"] * t["attention_head_dim"],
                        patch_size=tuple(t["patch_size"]), **dict(cfg.memory, rate=rate))
    if transformer is not None:
        enc.init_from_transformer(transformer.patch_embedding)
    return enc.to(device, dtype).eval()


def build_model(shape: Shape, device, dtype, rate: str = "4x4x2"):
    """The PFPModel bundle the app runs, with random weights in `shape`; everything built on `device`."""
    from pfp_app.model.codec import WanLatentCodec
    from pfp_app.model.bundle import MODEL_CONFIGS, PFPModel

    cfg = MODEL_CONFIGS[shape.config]
    tr = build_transformer(shape, device)
    phi = build_phi(shape, rate, device, dtype, tr)
    enc = build_text_encoder(shape, device)
    video = replace(cfg.video, height=shape.height, width=shape.width, fps=shape.fps,
                    segment_latent_frames=shape.segment_latents, text_encoder="umt5", text_max_tokens=shape.text_tokens)
    model = PFPModel(f"{shape.config}-bench", tr, phi, WanLatentCodec(build_vae(shape, device)), video, trained=False,
                     text_encoder_factory=lambda: enc)
    model._text_encoder = enc  # built now, so apply_profile places it before we measure
    return model.eval()


class Inputs:
    """The fixed random inputs of one shape: segment latents, history latents, text, timestep, positions."""

    def __init__(self, shape: Shape, device, dtype):
        from pfp_app.model.bundle import MODEL_CONFIGS

        t = MODEL_CONFIGS[shape.config].transformer
        self.channels = t["in_channels"]
        self.text_dim = t["text_dim"]
        self.h, self.w = shape.height // 8, shape.width // 8
        self.history_frames = 1 + (int(shape.history_seconds * shape.fps) - 1) // 4  # Wan: 1 + (T - 1) // 4
        g = _generator(device, 7)
        self.segment = torch.randn(1, self.channels, shape.segment_latents, self.h, self.w, generator=g, device=device).to(dtype)
        self.history = torch.randn(1, self.channels, self.history_frames, self.h, self.w, generator=g, device=device).to(dtype)
        self.next_segment = torch.randn(1, self.channels, shape.segment_latents, self.h, self.w, generator=g, device=device).to(dtype)
        self.text = (torch.randn(1, shape.text_tokens, self.text_dim, generator=g, device=device) * 0.1).to(dtype)
        self.timestep = torch.tensor([700.0], device=device)
        self.positions = torch.arange(self.history_frames, self.history_frames + shape.segment_latents,
                                      dtype=torch.float32, device=device)
        self.segment_tokens = shape.segment_latents * (self.h // 2) * (self.w // 2)


def full_history_tokens(inp: Inputs, hidden: int, device, dtype):
    """The uncompressed history as extra tokens: one per DiT token of every history frame, at its own position."""
    from pfp_app.model.memory_dit import MemoryTokens
    from pfp_app.model.rope import grid_coords

    coords = grid_coords(torch.arange(inp.history_frames, dtype=torch.float64), inp.h // 2, inp.w // 2)
    tokens = torch.randn(1, coords.shape[0], hidden, generator=_generator(device, 11), device=device).to(dtype)
    return MemoryTokens(tokens, coords)


def forward_shared_timestep(transformer, latents, timestep, text, memory, positions):
    """memory_dit_forward with one (B, 6, D) modulation for every token (memory at the queries' t): the cost
    of a step if modulation were applied per token *kind* instead of through a (B, N, 6, D) tensor."""
    from pfp_app.model.memory_dit import patch_grid
    from pfp_app.model.rope import grid_coords, rope_at_coords

    batch = latents.shape[0]
    gt, gh, gw = patch_grid(transformer, latents.shape)
    x = transformer.patch_embedding(latents).flatten(2).transpose(1, 2)  # (B, Nq, D)
    nq = x.shape[1]
    coords = torch.cat([grid_coords(positions, gh, gw), memory.coords.to(positions.device, torch.float64)])
    x = torch.cat([x, memory.tokens.to(x.dtype)], dim=1)
    rope = tuple(r.to(x.device) for r in rope_at_coords(coords, transformer.config.attention_head_dim,
                                                        dtype=transformer.rope.freqs_cos.dtype))
    temb, proj, text, _ = transformer.condition_embedder(timestep.expand(batch), text, None)
    proj = proj.unflatten(1, (6, -1))  # (B, 6, D)
    for block in transformer.blocks:
        x = block(x, text, proj, rope)
    x = x[:, :nq]
    shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (transformer.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    return transformer.proj_out(x)


# ---- sections -----------------------------------------------------------------------------------------

def _phi_run(b: Bench, shape: Shape, rate: str, inp: "Inputs", grown: torch.Tensor, rec: dict) -> None:
    enc = build_phi(shape, rate, b.device, b.dtype)
    tokens, cache = enc.encode_incremental(inp.history, None)
    rec["memory_tokens"] = tokens.num_tokens
    rec["history_latent_frames"] = inp.history_frames
    rec["encode_20s"] = b.time_calls(lambda: enc(inp.history), 3, 5, 10)
    rec["add_segment"] = b.time_calls(lambda: enc.encode_incremental(grown, cache), 3, 5, 10)
    rec["reencode_all"] = b.time_calls(lambda: enc(grown), 2, 3, 8)
    inc, _ = enc.encode_incremental(grown, cache)
    full = enc(grown)
    diff = inc.tokens.float() - full.tokens.float()
    rec["incremental_vs_full_max_abs_diff"] = float(diff.abs().max())
    rec["incremental_vs_full_rel_err"] = float(diff.norm() / full.tokens.float().norm().clamp_min(1e-12))
    rec["weights_mib"] = sum(p.numel() * p.element_size() for p in enc.parameters()) / 2**20


def section_phi(b: Bench, shape: Shape, rates) -> None:
    """φ: compress 20 s of history, add one segment to an existing memory, re-encode everything."""
    res = b.results["phi"].setdefault(shape.label, {})
    inp = Inputs(shape, b.device, b.dtype)
    grown = torch.cat([inp.history, inp.next_segment], dim=2)
    for rate in rates:
        rec = res[rate] = {}
        if b.left() < 5:
            rec["error"] = "skipped (time budget)"
            continue
        b.log(f"phi {shape.label} {rate}")
        with b.guard(f"phi {shape.label} {rate}", rec), torch.no_grad():
            _phi_run(b, shape, rate, inp, grown, rec)
        if "add_segment" in rec:
            b.log(f"phi {shape.label} {rate}: {rec['memory_tokens']} tokens, 20 s in {rec['encode_20s']['median_s']:.4f} s, "
                  f"+1 segment in {rec['add_segment']['median_s']:.4f} s")
    del inp, grown


def _step_row(b: Bench, shape: Shape, tr, inp: "Inputs", row: str) -> dict:
    """One row of (a): build the memory for `row`, then time the step (all locals die with this frame)."""
    from pfp_app.model.memory_dit import memory_dit_forward

    forward = memory_dit_forward
    hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
    if row == "segment":
        memory = None
    elif row == "full":
        memory = full_history_tokens(inp, hidden, b.device, b.dtype)
    else:
        rate = row.replace("shared_t_", "")
        phi = build_phi(shape, rate, b.device, b.dtype, tr)
        memory = phi(inp.history)
        del phi
        if row.startswith("shared_t_"):
            forward = forward_shared_timestep
    b.cleanup()
    base = b.reset_peak()
    n_mem = 0 if memory is None else memory.num_tokens
    slow = row == "full" or (shape.label == "14b" and row in ("2x2x2", "2x2x1"))
    rec = {"tokens": inp.segment_tokens + n_mem, "memory_tokens": n_mem}
    rec.update(b.time_calls(lambda: forward(tr, inp.segment, inp.timestep, inp.text, memory, inp.positions),
                            1 if slow else 3, 2 if slow else 5, 40 if slow else 25, min_reps=2 if slow else 1))
    if b.cuda:
        rec["peak_gib"] = b.peak() / GiB
        rec["activation_peak_gib"] = (b.peak() - base) / GiB
    return rec


def section_steps(b: Bench, shape: Shape, rows) -> None:
    """Seconds per denoising step with the DiT resident in bf16: segment alone, + memory, + full history."""
    res = b.results["steps"].setdefault(shape.label, {})
    todo = [r for r in rows if r not in res or "error" in res[r]]
    if not todo:
        return
    b.log(f"steps {shape.label}: building the DiT")
    build: dict = {}
    holder: dict = {}
    with b.guard(f"steps {shape.label} build", build):
        holder["tr"] = build_transformer(shape, b.device)
    if "error" in build:
        for r in todo:
            res[r] = {"error": f"build failed: {build['error']}"}
        return
    tr = holder.pop("tr")
    inp = Inputs(shape, b.device, b.dtype)
    for row in todo:
        rec = res[row] = {}
        if b.left() < (30 if shape.label == "14b" else 10):
            rec["error"] = "skipped (time budget)"
            continue
        b.log(f"steps {shape.label} {row}")
        with b.guard(f"steps {shape.label} {row}", rec), torch.no_grad():
            rec.update(_step_row(b, shape, tr, inp, row))
        if "median_s" in rec:
            b.log(f"steps {shape.label} {row}: {rec['tokens']} tokens, {rec['median_s']:.3f} s/step")
    del tr, inp
    b.cleanup()


def _profile_run(b: Bench, shape: Shape, name: str, inp: "Inputs", rec: dict, profiles=None) -> None:
    """One row of (c): build the bundle, apply the profile, run text -> φ -> DiT steps -> VAE decode."""
    from pfp_app.runtime.apply import apply_profile
    from pfp_app.runtime.footprint import estimate_peak_bytes, model_footprint
    from pfp_app.runtime.profiles import get_profile

    t = time.perf_counter()
    model = build_model(shape, b.device, b.dtype)
    footprint = model_footprint(model, shape.history_seconds)
    info = apply_profile(model, name, b.device, strict_device=b.cuda, profiles=profiles)
    rec["setup_s"] = round(time.perf_counter() - t, 2)
    rec["runtime"] = info.summary()
    rec["estimate_gib"] = estimate_peak_bytes(footprint, get_profile(name, profiles).settings) / GiB
    b.cleanup()
    base = b.reset_peak()
    rec["resident_weights_gib"] = base / GiB if b.cuda else None
    dtype = info.dtype
    seg, hist = inp.segment.to(dtype), inp.history.to(dtype)

    b.log(f"profile {shape.label} {name}: text encoder")
    t = time.perf_counter()
    text = model.text_encoder.encode(["a prompt"]).to(info.device, dtype)  # (1, L, text_dim)
    b.sync()
    rec["text_s"] = round(time.perf_counter() - t, 3)
    rec["text_peak_gib"] = b.peak() / GiB if b.cuda else None

    b.reset_peak()
    t = time.perf_counter()
    memory = model.memory_encoder(hist)
    b.sync()
    rec["phi_s"] = round(time.perf_counter() - t, 3)
    rec["phi_peak_gib"] = b.peak() / GiB if b.cuda else None
    rec["memory_tokens"] = memory.num_tokens

    b.log(f"profile {shape.label} {name}: DiT steps")
    out = {}

    def step():
        out["v"] = model.velocity(seg, inp.timestep, text, memory, inp.positions)

    b.reset_peak()
    rec["step"] = b.time_calls(step, 2, 3, 30 if shape.label == "14b" else 15)
    rec["step_s"] = rec["step"]["median_s"]
    rec["dit_peak_gib"] = b.peak() / GiB if b.cuda else None
    v = out.pop("v").float().cpu()
    rec["output_finite"] = bool(torch.isfinite(v).all())
    ref = b.refs.get(shape.label)
    if name == "resident" or ref is None:
        b.refs[shape.label] = v
        rec["check_vs_resident"] = "reference" if name == "resident" else "no resident run"
    else:
        rec["check_vs_resident"] = float((v - ref).norm() / ref.norm().clamp_min(1e-12))

    b.log(f"profile {shape.label} {name}: VAE decode")
    b.reset_peak()
    dec = b.time_calls(lambda: model.codec.decode(seg), 1, 1, 20)
    rec["vae_s"] = dec["median_s"]
    rec["vae_peak_gib"] = b.peak() / GiB if b.cuda else None
    if b.cuda:
        rec["peak_gib"] = max(rec["text_peak_gib"], rec["phi_peak_gib"], rec["dit_peak_gib"], rec["vae_peak_gib"])


def section_profiles(b: Bench, shape: Shape, profiles) -> None:
    """The whole pipeline under each runtime profile: text -> φ -> DiT steps -> VAE decode, peak VRAM."""
    from pfp_app.runtime.profiles import load_profiles

    res = b.results["profiles"].setdefault(shape.label, {})
    inp = Inputs(shape, b.device, b.dtype)
    min_left = 70 if shape.label == "14b" else 25
    for name in profiles:
        if res.get(name) and "error" not in res[name]:
            continue
        rec = res[name] = {}
        if b.left() < min_left:
            rec["error"] = "skipped (time budget)"
            continue
        b.log(f"profile {shape.label} {name}: build + apply")
        with b.guard(f"profile {shape.label} {name}", rec), torch.no_grad():
            _profile_run(b, shape, name, inp, rec)
        if "step_s" in rec:
            b.log(f"profile {shape.label} {name}: peak {rec.get('peak_gib') or 0:.2f} GiB, step {rec['step_s']:.3f} s")
        known = load_profiles()
        streamed = name in known and known[name].settings.transformer_offload != "none" and known[name].settings.use_stream
        if b.cuda and streamed and rec.get("error") not in (None, "OOM", "skipped (time budget)") and b.left() >= min_left:
            # insurance for a one-shot run: the same profile without CUDA streams (plain group offload)
            alt = f"{name} (no streams)"
            profs = dict(known)
            profs[alt] = replace(known[name], name=alt, settings=replace(known[name].settings, use_stream=False))
            rec2 = res[alt] = {}
            b.log(f"profile {shape.label} {alt}: retry without streams")
            with b.guard(f"profile {shape.label} {alt}", rec2), torch.no_grad():
                _profile_run(b, shape, alt, inp, rec2, profs)
    del inp
    b.cleanup()


# ---- markdown --------------------------------------------------------------------------------------------

def _f(x, digits=3, suffix="") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}{suffix}"


def _cell(rec: dict | None, key: str, digits=3) -> str:
    if not rec:
        return "not run"
    if "error" in rec:
        return rec["error"] if len(rec["error"]) < 40 else "error (see JSON)"
    return _f(rec.get(key), digits)


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Command: `{meta.get('command')}`  ", f"GPU: {meta.get('gpu')} · torch {meta.get('torch')} · "
             f"diffusers {meta.get('diffusers')} · transformers {meta.get('transformers')} · {meta.get('date')}", ""]
    shapes = [s for s in meta.get("shapes", []) if s in results["steps"] or s in results["profiles"]]

    # (a) step time
    lines += ["**(a) Seconds per denoising step** (median, CUDA events; segment 9 latent frames at 480x832, "
              "20 s history = 80 latent frames; DiT resident bf16; memory at t = 0 via the app's two-group block path)", ""]
    head = "| row |" + "".join(f" tokens ({s}) | {s} s/step | x segment |" for s in shapes) + " target / reference |"
    lines += [head, "|" + "---|" * (2 + 3 * len(shapes))]
    labels = {"segment": "segment alone", "4x4x2": "+ φ memory 4x4x2", "2x2x2": "+ φ memory 2x2x2",
              "2x2x1": "+ φ memory 2x2x1", "full": "+ full 20 s history, uncompressed",
              "shared_t_4x4x2": "+ memory 4x4x2, one shared timestep (what-if)"}
    notes = {"segment": "ref 1.3B: 0.186", "4x4x2": "target <= 1.5x segment; ref 1.3B: 0.279 (~5k tokens)",
             "full": "ref 1.3B: 7.56 (139k tokens)", "shared_t_4x4x2": "lower bound: no separate timestep for memory"}
    for row, label in labels.items():
        if not any(row in results["steps"].get(s, {}) for s in shapes):
            continue
        cells = []
        for s in shapes:
            rec = results["steps"].get(s, {}).get(row)
            seg = results["steps"].get(s, {}).get("segment", {})
            ratio = (rec["median_s"] / seg["median_s"]) if rec and "median_s" in rec and "median_s" in seg else None
            cells.append(f" {rec.get('tokens', 'n/a') if rec else 'n/a'} | {_cell(rec, 'median_s')} | {_f(ratio, 2)} |")
        lines.append(f"| {label} |" + "".join(cells) + f" {notes.get(row, '')} |")

    # (b) φ
    lines += ["", "**(b) φ (memory encoder) cost**: compress 20 s of 480p history; add one 9-latent segment to an "
              "existing memory (encode_incremental); re-encode history + segment from scratch", "",
              "| shape | rate | memory tokens | compress 20 s (s) | add a segment (s) | re-encode all (s) | "
              "incremental vs full (rel. err) | target |", "|---|---|---|---|---|---|---|---|"]
    for s, per_rate in results["phi"].items():
        for rate, rec in per_rate.items():
            enc_s = rec.get("encode_20s", {}).get("median_s", rec.get("error"))
            add_s = rec.get("add_segment", {}).get("median_s")
            all_s = rec.get("reencode_all", {}).get("median_s")
            lines.append(f"| {s} | {rate} | {rec.get('memory_tokens', 'n/a')} | {_f(enc_s, 4)} | {_f(add_s, 4)} | "
                         f"{_f(all_s, 4)} | {_f(rec.get('incremental_vs_full_rel_err'), 5)} | "
                         f"encode < 0.5 s, add < 0.1 s |")

    # (c) profiles
    lines += ["", "**(c) Whole pipeline under each runtime profile** (umT5-XXL-shaped text encoder on a 512-token "
              "prompt, φ 4x4x2 on 20 s, DiT steps with the memory, Wan VAE decode of one 9-latent segment; "
              "peak = torch.cuda.max_memory_allocated over all stages)", "",
              "| shape | profile | peak VRAM (GiB) | auto estimate (GiB) | DiT step (s) | x resident | text (s) / peak | "
              "DiT peak | VAE decode (s) / peak | output vs resident | target |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in shapes:
        per = results["profiles"].get(s, {})
        res_step = per.get("resident", {}).get("step_s")
        for name, rec in per.items():
            if "error" in rec:
                lines.append(f"| {s} | {name} | {rec['error'][:60]} |" + " |" * 8)
                continue
            if "step_s" not in rec:
                continue
            ratio = rec["step_s"] / res_step if res_step else None
            target = "<= 4 GiB, <= 1.35x" if (s == "14b" and name == "offload+fp8") else ""
            chk = rec.get("check_vs_resident")
            lines.append(
                f"| {s} | {name} | {_f(rec.get('peak_gib'), 2)} | {_f(rec.get('estimate_gib'), 2)} | "
                f"{_f(rec['step_s'])} | {_f(ratio, 2)} | {_f(rec.get('text_s'), 2)} / {_f(rec.get('text_peak_gib'), 2)} | "
                f"{_f(rec.get('dit_peak_gib'), 2)} | {_f(rec.get('vae_s'), 2)} / {_f(rec.get('vae_peak_gib'), 2)} | "
                f"{_f(chk, 4) if not isinstance(chk, str) else chk} | {target} |")

    # targets
    lines += ["", "**Targets (issue 5)**", "", "| target | measured | met |", "|---|---|---|"]
    for s in shapes:
        st = results["steps"].get(s, {})
        if "median_s" in st.get("4x4x2", {}) and "median_s" in st.get("segment", {}):
            r = st["4x4x2"]["median_s"] / st["segment"]["median_s"]
            lines.append(f"| {s}: memory 4x4x2 adds <= 1.5x to a segment step | {r:.2f}x | "
                         f"{'yes' if r <= TARGETS['memory_ratio_4x4x2'] else 'no'} |")
    phi = results["phi"]
    for s in phi:
        rec = phi[s].get("4x4x2", {})
        if "encode_20s" in rec and "add_segment" in rec:
            e, a = rec["encode_20s"]["median_s"], rec["add_segment"]["median_s"]
            lines.append(f"| {s}: φ compresses 20 s in < 0.5 s | {e:.3f} s | {'yes' if e < 0.5 else 'no'} |")
            lines.append(f"| {s}: φ adds a segment in < 0.1 s | {a:.3f} s | {'yes' if a < 0.1 else 'no'} |")
    per = results["profiles"].get("14b", {})
    o, rsd = per.get("offload+fp8", {}), per.get("resident", {})
    if o.get("peak_gib") is not None:
        lines.append(f"| 14b: whole pipeline <= 4 GiB under offload+fp8 | {o['peak_gib']:.2f} GiB | "
                     f"{'yes' if o['peak_gib'] <= 4.0 else 'no'} |")
    if "step_s" in o and "step_s" in rsd:
        r = o["step_s"] / rsd["step_s"]
        lines.append(f"| 14b: offload+fp8 step <= 1.35x resident | {r:.2f}x | {'yes' if r <= 1.35 else 'no'} |")
    if results["errors"]:
        lines += ["", f"{len(results['errors'])} measurement(s) failed: see `errors` in the JSON."]
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="1.3b,14b", help="comma-separated: 1.3b, 14b (tiny: see --tiny)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny shapes, every section, seconds")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--out", default=None, help="JSON results, rewritten after every measurement")
    p.add_argument("--md", default=None, help="also write the markdown tables here (default: --out with .md)")
    p.add_argument("--budget-s", type=float, default=None, help="time budget for all sections (default 400; tiny 50)")
    p.add_argument("--profiles", default=",".join(PROFILE_ORDER), help="profiles for section (c)")
    p.add_argument("--sections", default="phi,steps,profiles,whatif", help="which sections to run")
    args = p.parse_args(argv)
    if args.tiny:
        args.shapes = "tiny"
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.budget_s = args.budget_s or (50.0 if args.tiny else 400.0)
    shapes = [SHAPES[s.strip().lower()] for s in args.shapes.split(",") if s.strip()]
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    if torch.device(args.device).type == "cpu" and "cpu" not in profiles:
        profiles.append("cpu")  # on the CPU the GPU profiles run as an emulation (float8 storage, hooks, no streams)
    sections = {x.strip() for x in args.sections.split(",")}
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU")
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and a busy machine makes them spin
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import diffusers
    import transformers
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    transformers.logging.set_verbosity_error()

    b = Bench(args)
    b.results["meta"] = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(b.device) if b.cuda else f"CPU ({platform.processor() or platform.machine()})",
        "gpu_memory_gib": torch.cuda.get_device_properties(b.device).total_memory / GiB if b.cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "shapes": [s.label for s in shapes], "dtype": str(b.dtype), "budget_s": args.budget_s,
    }
    b.save()
    by = {s.label: s for s in shapes}
    small = [s for s in shapes if s.label != "14b"]
    big = by.get("14b")
    plan = []  # priority order: what matters most runs first, so a time-out loses the least
    if "phi" in sections:
        plan += [(section_phi, s, RATES if s.label != "14b" else ("4x4x2",)) for s in shapes]
    if "steps" in sections:
        plan += [(section_steps, s, ["segment", *RATES]) for s in small]
    if "profiles" in sections and big:
        plan += [(section_profiles, big, [x for x in profiles if x != "lowvram"])]
    if "steps" in sections and big:
        plan += [(section_steps, big, ["segment", *RATES])]
    if "steps" in sections:
        plan += [(section_steps, s, ["full"]) for s in small if s.full_history]
    if "profiles" in sections:
        plan += [(section_profiles, s, profiles) for s in [*small, *([big] if big else [])]]
    if "whatif" in sections:
        plan += [(section_steps, s, ["shared_t_4x4x2"]) for s in [*([big] if big else []), *small]]
    for fn, shape, what in plan:
        if b.left() <= 5:
            b.log(f"time budget spent: skipping {fn.__name__} {shape.label}")
            continue
        try:
            fn(b, shape, what)
        except Exception as err:  # noqa: BLE001
            b.results["errors"].append({"where": f"{fn.__name__} {shape.label}", "error": repr(err)[:300],
                                        "trace": traceback.format_exc(limit=6)[-2000:]})
            b.log(f"{fn.__name__} {shape.label} failed: {err!r}")
            b.cleanup()
        b.save()
    b.results["meta"]["total_s"] = round(time.perf_counter() - b.t0, 1)
    b.save()
    try:
        md = markdown(b.results)
    except Exception:  # noqa: BLE001 - the JSON is what matters; never lose the run to a formatting bug
        md = "markdown formatting failed:\n" + traceback.format_exc() + "\n" + json.dumps(b.results, indent=1, default=str)
    md_path = args.md or (str(Path(args.out).with_suffix(".md")) if args.out else None)
    if md_path:
        Path(md_path).write_text(md + "\n")
    print("\n" + md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
