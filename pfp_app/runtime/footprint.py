"""How much memory a model needs under a runtime profile, and the profile `auto` chooses from free VRAM.

Parameter counts and activation estimates (`model_footprint`, calibrated against benchmarks/gpu_bench.py),
the estimated peak GPU memory of the whole pipeline under a profile (`estimate_peak_bytes`), the CPU memory it
pins (`host_bytes_needed`), and `choose_profile`: the first profile in `auto_rank` order that fits, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..model.codec_widen import decoder_width
from ..model.memory_encoder import memory_grid
from .profiles import ProfileSettings, RuntimeProfile, load_profiles

GiB = 1024**3

# Parameter counts of text encoders that are built lazily (we size them without loading them).
_TEXT_ENCODER_PARAMS = {"umt5": (5_680_910_336, 1_050_148_864), "minilm": (22_713_216, 11_720_448)}  # (total, largest layer)
# Calibration of the activation estimates (see `model_footprint`); the GPU benchmark prints estimate vs measured.
_VAE_DECODE_BYTES_PER_PIXEL = 366  # Wan VAE (base_dim 96) untiled decode: ~4.5 GiB for 33 x 480 x 832 frames
_VAE_TILED_BYTES = int(1.1 * GiB)  # tiled decode at base_dim 96 (256-pixel tiles)
_SAFETY = 1.15  # margin on estimated peaks (allocator fragmentation, cuBLAS workspaces)
_RESERVE = int(0.5 * GiB)


@dataclass(frozen=True)
class ModelFootprint:
    """What the runtime needs to know to place a model: parameter counts and activation estimates (bytes)."""

    transformer_params: int
    transformer_block_params: int  # the largest DiT block (block offload holds two: current + prefetched)
    transformer_outer_params: int  # everything outside the blocks (always resident)
    transformer_largest_layer: int  # largest single weight (layerwise casting's compute-dtype copy)
    text_encoder_params: int
    text_encoder_largest_layer: int
    vae_params: int
    memory_encoder_params: int
    dit_activation_bytes: int  # one DiT step in bf16: segment + a 20-s memory at φ's rate
    text_activation_bytes: int
    vae_decode_bytes: int  # untiled decode of one segment, at 4 bytes per value (scaled by the VAE dtype)
    vae_decode_tiled_bytes: int


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _largest_layer(module: nn.Module) -> int:
    return max((p.numel() for p in module.parameters()), default=0)


def dit_activation_bytes(hidden: int, ffn: int, tokens: int) -> int:
    """Working memory of one DiT step over `tokens` tokens, bf16, with the per-token (B, N, 6, D) modulation.

    Per token: the (6, D) bf16 modulation kept for all blocks (12 D) and its fp32 sum inside a block
    (24 D), the hidden state (2 D), then the larger of attention (q, k, v, fp32 rope temporaries: ~16 D)
    and the feed-forward (norm 6 D + two ffn-wide tensors 4 F).
    """
    return tokens * (38 * hidden + max(16 * hidden, 6 * hidden + 4 * ffn))


def model_footprint(model, history_seconds: float = 20.0) -> ModelFootprint:
    """Sizes of a PFPModel without building its (lazy) text encoder."""
    tr = model.transformer
    cfg = tr.config
    blocks = list(tr.blocks)
    block_sizes = [_numel(b) for b in blocks] or [0]
    total = _numel(tr)
    enc = model._text_encoder
    if enc is not None and isinstance(getattr(enc, "model", None), nn.Module):
        te_params, te_largest = _numel(enc.model), _largest_layer(enc.model)
    else:
        te_params, te_largest = _TEXT_ENCODER_PARAMS.get(model.video.text_encoder, (0, 0))
    v, c = model.video, model.codec
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    p_t, p_h, p_w = cfg.patch_size
    h, w = v.height // c.spatial_ratio // p_h, v.width // c.spatial_ratio // p_w
    seg_tokens = v.segment_latent_frames // p_t * h * w
    hist_latents = c.latent_frames(max(1, int(history_seconds * v.fps)))
    rate = model.memory_encoder.config.rate
    mem_tokens = 1
    for n in memory_grid((hist_latents // p_t, h, w), rate):
        mem_tokens *= n
    vae_scale = decoder_width(c.vae) / 96  # decoding runs at the decoder's width
    pixels = c.pixel_frames(v.segment_latent_frames) * v.height * v.width
    decode = int(_VAE_DECODE_BYTES_PER_PIXEL * pixels * vae_scale)
    return ModelFootprint(
        transformer_params=total, transformer_block_params=max(block_sizes),
        transformer_outer_params=total - sum(_numel(b) for b in blocks),
        transformer_largest_layer=_largest_layer(tr),
        text_encoder_params=te_params, text_encoder_largest_layer=te_largest,
        vae_params=_numel(c.vae), memory_encoder_params=_numel(model.memory_encoder),
        dit_activation_bytes=dit_activation_bytes(hidden, cfg.ffn_dim, seg_tokens + mem_tokens),
        text_activation_bytes=v.text_max_tokens * 4096 * 64,
        vae_decode_bytes=decode, vae_decode_tiled_bytes=min(decode, int(_VAE_TILED_BYTES * vae_scale)),
    )


def estimate_peak_bytes(fp: ModelFootprint, s: ProfileSettings) -> int:
    """Estimated peak GPU memory of the whole pipeline (text -> φ -> DiT steps -> decode) under settings `s`.

    Peak = what stays resident + the largest working set among the stages (they run one after another).
    """
    cd = s.compute_dtype.itemsize
    ts, es, vs = s.transformer_storage.itemsize, s.text_encoder_storage.itemsize, s.vae_dtype.itemsize
    t_cast = fp.transformer_largest_layer * cd if ts < cd else 0  # the upcast copy of the running layer
    e_cast = fp.text_encoder_largest_layer * cd if es < cd else 0
    outer = fp.transformer_outer_params * cd  # patch embedding, condition embedder, head: kept in compute dtype
    if s.transformer_offload == "none":
        dit_resident, dit_work = (fp.transformer_params - fp.transformer_outer_params) * ts + outer, t_cast
    else:
        dit_resident, dit_work = outer, 2 * fp.transformer_block_params * ts + t_cast
    te_weights = fp.text_encoder_params * es
    te_resident, te_work = {"resident": (te_weights, e_cast), "while_used": (0, te_weights + e_cast),
                            "offload": (0, fp.text_encoder_largest_layer * es * 5 // 4 + e_cast)}[s.text_encoder_placement]
    decode = (fp.vae_decode_tiled_bytes if s.vae_tiling else fp.vae_decode_bytes) * vs // 4
    vae_weights = fp.vae_params * vs
    vae_resident, vae_work = (vae_weights, decode) if s.vae_placement == "resident" else (0, vae_weights + decode)
    resident = dit_resident + te_resident + vae_resident + fp.memory_encoder_params * cd
    stages = (te_work + fp.text_activation_bytes, dit_work + fp.dit_activation_bytes, vae_work)
    return resident + max(stages)


def host_bytes_needed(fp: ModelFootprint, s: ProfileSettings) -> int:
    """CPU memory the profile keeps weights in (pinned for offloading)."""
    need = 0
    if s.transformer_offload != "none":
        need += fp.transformer_params * s.transformer_storage.itemsize
    if s.text_encoder_placement != "resident":
        need += fp.text_encoder_params * s.text_encoder_storage.itemsize
    return need


def _host_free_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_profile(model, free_bytes: int | None = None, *, host_free_bytes: int | None = None,
                   profiles: dict[str, RuntimeProfile] | None = None) -> tuple[str, str]:
    """(profile name, human-readable reason) for `model` (a PFPModel or a ModelFootprint).

    free_bytes: free GPU memory (default: torch.cuda.mem_get_info() of the current device; no CUDA -> 'cpu').
    """
    profiles = profiles if profiles is not None else load_profiles()
    if free_bytes is None:
        if not torch.cuda.is_available():
            return "cpu", "no CUDA GPU found -> cpu (float32)"
        free_bytes = torch.cuda.mem_get_info()[0]
    fp = model if isinstance(model, ModelFootprint) else model_footprint(model)
    host = host_free_bytes if host_free_bytes is not None else _host_free_bytes()
    candidates = sorted((p for p in profiles.values() if p.auto_rank is not None and p.settings.device == "cuda"),
                        key=lambda p: p.auto_rank)
    if not candidates:
        raise ValueError("no runtime profile has an auto_rank: 'auto' has nothing to choose from")
    needs = {p.name: int(estimate_peak_bytes(fp, p.settings) * _SAFETY) + _RESERVE for p in candidates}
    need_resident = needs.get("resident", max(needs.values()))
    head = f"{free_bytes / GiB:.1f} GiB free, model needs ~{need_resident / GiB:.1f} GiB resident"
    skipped_for_ram = []
    for p in candidates:
        if needs[p.name] > free_bytes:
            continue
        host_need = host_bytes_needed(fp, p.settings)
        if host is not None and host_need > 0.9 * host:
            skipped_for_ram.append(f"{p.name} needs ~{host_need / GiB:.0f} GiB of CPU RAM, {host / GiB:.0f} GiB free")
            continue
        tail = "" if p.name == "resident" else f" (~{needs[p.name] / GiB:.1f} GiB)"
        note = f"; skipped {'; '.join(skipped_for_ram)}" if skipped_for_ram else ""
        return p.name, f"{head} -> {p.name}{tail}{note}"
    smallest = min(candidates, key=lambda p: needs[p.name])
    return smallest.name, (f"{head}; even {smallest.name} needs ~{needs[smallest.name] / GiB:.1f} GiB -> trying "
                           f"{smallest.name} anyway (use --profile cpu if it runs out of memory)")
