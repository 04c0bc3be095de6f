"""Runtime profiles: where each part of the model lives and in which precision, chosen from free VRAM.

A profile (presets/profiles/*.json: name, description, settings) says, for the DiT, the text encoder,
the VAE and φ, the storage dtype, the placement and the compute dtype:
- `resident`: everything on the GPU in bfloat16 (fastest; Wan 14B needs ~50 GiB).
- `lowvram`: the DiT resident; the text encoder and the VAE on the GPU only while used, tiled decode.
- `fp8`: weights stored as float8_e4m3fn and cast layer by layer to bfloat16 for compute
  (diffusers' `enable_layerwise_casting`); φ is small and stays bfloat16.
- `offload`: DiT blocks in pinned CPU memory, each copied to the GPU just before it runs while the
  previous one computes (diffusers' block-level `enable_group_offload` with a CUDA stream); text
  encoder offloaded leaf by leaf. `offload+fp8` does the same with float8 storage.
- `cpu`: float32 on the CPU (the embedded default's path).
`auto` picks the first profile (in `auto_rank` order) whose estimated peak fits in the free VRAM and
says why. A user adds a profile by dropping a JSON file beside the shipped ones.

Attention is PyTorch SDPA unless a profile (or `apply_profile(attention=...)`) asks for xformers; that
is used only where xformers is installed and the device is CUDA, otherwise we stay on SDPA and say so.
"""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from ..model.codec import WanLatentCodec
from ..model.codec_widen import decoder_width
from ..model.memory_encoder import memory_grid
from ..model.text_encoder import TextEncoder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = PROJECT_ROOT / "presets" / "profiles"
GiB = 1024**3

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
_TRANSFORMER_OFFLOAD = ("none", "block")
_PLACEMENTS = {"text_encoder": ("resident", "while_used", "offload"), "vae": ("resident", "while_used")}
_ATTENTION = ("sdpa", "xformers", "auto")

# Parameter counts of text encoders that are built lazily (we size them without loading them).
_TEXT_ENCODER_PARAMS = {"umt5": (5_680_910_336, 1_050_148_864), "minilm": (22_713_216, 11_720_448)}  # (total, largest layer)
# Calibration of the activation estimates (see `model_footprint`); the GPU benchmark prints estimate vs measured.
_VAE_DECODE_BYTES_PER_PIXEL = 366  # Wan VAE (base_dim 96) untiled decode: ~4.5 GiB for 33 x 480 x 832 frames
_VAE_TILED_BYTES = int(1.1 * GiB)  # tiled decode at base_dim 96 (256-pixel tiles)
_SAFETY = 1.15  # margin on estimated peaks (allocator fragmentation, cuBLAS workspaces)
_RESERVE = int(0.5 * GiB)


# ---- profiles -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileSettings:
    device: str = "cuda"  # 'cuda' or 'cpu'
    compute_dtype: torch.dtype = torch.bfloat16
    transformer_storage: torch.dtype = torch.bfloat16  # float8 -> layerwise casting to compute_dtype
    transformer_offload: str = "none"  # 'none' | 'block' (group offload per DiT block)
    use_stream: bool = True  # overlap weight copies with compute (CUDA streams)
    text_encoder_storage: torch.dtype = torch.bfloat16
    text_encoder_placement: str = "resident"  # 'resident' | 'while_used' | 'offload' (leaf-level, streamed)
    vae_dtype: torch.dtype = torch.float32
    vae_placement: str = "resident"  # 'resident' | 'while_used'
    vae_tiling: bool = False
    attention: str = "sdpa"  # 'sdpa' | 'xformers' | 'auto' (xformers where installed and on CUDA)


@dataclass(frozen=True)
class RuntimeProfile:
    name: str
    description: str
    settings: ProfileSettings
    auto_rank: int | None = None  # order in which `auto` tries it (None: never chosen by auto)
    source: Path | None = None


_SCHEMA = {  # JSON key -> (ProfileSettings field, parser)
    "device": ("device", "device"),
    "compute_dtype": ("compute_dtype", "dtype"),
    "attention": ("attention", _ATTENTION),
    "transformer.storage_dtype": ("transformer_storage", "dtype"),
    "transformer.offload": ("transformer_offload", _TRANSFORMER_OFFLOAD),
    "transformer.use_stream": ("use_stream", bool),
    "text_encoder.storage_dtype": ("text_encoder_storage", "dtype"),
    "text_encoder.placement": ("text_encoder_placement", _PLACEMENTS["text_encoder"]),
    "vae.dtype": ("vae_dtype", "dtype"),
    "vae.placement": ("vae_placement", _PLACEMENTS["vae"]),
    "vae.tiling": ("vae_tiling", bool),
}


def parse_profile(data: dict, source: Path | None = None) -> RuntimeProfile:
    """A profile from its JSON form; every mistake names the file, the key and the valid values."""
    where = f"runtime profile {str(source) if source else '(inline)'}"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ValueError(f"{where}: needs a non-empty \"name\"")
    unknown = set(data) - {"name", "description", "settings", "auto_rank"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: name, description, settings, auto_rank")
    name = data["name"].strip()
    if name == "auto":
        raise ValueError(f"{where}: 'auto' is reserved (it chooses among the other profiles)")
    flat: dict[str, object] = {}
    for key, value in (data.get("settings") or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    kwargs = {}
    for key, value in flat.items():
        if key not in _SCHEMA:
            raise ValueError(f"{where}: unknown setting {key!r}; valid settings: {', '.join(_SCHEMA)}")
        attr, kind = _SCHEMA[key]
        if kind == "dtype":
            if value not in _DTYPES:
                raise ValueError(f"{where}: {key} = {value!r} is not a dtype; choose one of {', '.join(_DTYPES)}")
            value = _DTYPES[value]
        elif kind == "device":
            if value not in ("cuda", "cpu"):
                raise ValueError(f"{where}: device = {value!r}; choose 'cuda' or 'cpu'")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
        elif value not in kind:
            raise ValueError(f"{where}: {key} = {value!r}; choose one of {', '.join(kind)}")
        kwargs[attr] = value
    rank = data.get("auto_rank")
    if rank is not None and not isinstance(rank, int):
        raise ValueError(f"{where}: auto_rank must be an integer or null")
    return RuntimeProfile(name, str(data.get("description", "")), ProfileSettings(**kwargs), rank, source)


def load_profiles(dirs: list[str | Path] | None = None) -> dict[str, RuntimeProfile]:
    """Profiles from presets/profiles/ plus `dirs` (later ones override earlier ones of the same name)."""
    profiles: dict[str, RuntimeProfile] = {}
    for folder in [PROFILE_DIR, *(dirs or [])]:
        for path in sorted(Path(folder).glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"runtime profile {path} is not valid JSON: {err}") from err
            prof = parse_profile(data, path)
            profiles[prof.name] = prof
    if not profiles:
        raise ValueError(f"no runtime profiles found in {PROFILE_DIR}")
    return profiles


def profile_names(dirs: list[str | Path] | None = None) -> list[str]:
    """'auto' first, then the profiles in auto order, then the others."""
    profiles = load_profiles(dirs)
    ranked = sorted(profiles.values(), key=lambda p: (p.auto_rank is None, p.auto_rank or 0, p.name))
    return ["auto", *(p.name for p in ranked)]


def get_profile(name: str, profiles: dict[str, RuntimeProfile] | None = None) -> RuntimeProfile:
    profiles = profiles if profiles is not None else load_profiles()
    if name not in profiles:
        valid = ", ".join(["auto", *sorted(profiles)])
        raise ValueError(f"unknown runtime profile {name!r}; choose one of: {valid}")
    return profiles[name]


# ---- sizes and the automatic choice -----------------------------------------------------------------

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


# ---- building blocks ---------------------------------------------------------------------------------

@contextmanager
def on_device(module: nn.Module, device: str | torch.device, non_blocking: bool = True) -> Iterator[nn.Module]:
    """Run `module` on `device` inside the block, then put its original tensors back.

    For inference: the weights are read, not changed, so leaving costs nothing (the CPU tensors, pinned
    if they were, are restored as they are; nothing is copied back).
    """
    device = torch.device(device)
    saved = []
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.device != device:
            saved.append((t, t.data))
            t.data = t.data.to(device, non_blocking=non_blocking)
    try:
        yield module
    finally:
        for t, data in saved:
            t.data = data


def _keep_fp32_names(module: nn.Module, dtype: torch.dtype) -> set[str]:
    from diffusers.models.modeling_utils import ModelMixin

    keep = set(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    if isinstance(module, ModelMixin) or dtype == torch.float16:  # transformers keeps these for fp16 only
        keep |= set(getattr(module, "_keep_in_fp32_modules", None) or [])
    return keep


@torch.no_grad()
def cast_for_compute(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating weights to `dtype` in place, keeping the modules the model marks as float32-only
    (Wan: rope, time embedder, modulation tables, norms), as from_pretrained(torch_dtype=...) does."""
    keep = _keep_fp32_names(module, dtype) if dtype != torch.float32 else set()
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        if not t.is_floating_point():
            continue
        target = torch.float32 if keep and any(k in name.split(".") for k in keep) else dtype
        if t.dtype != target:
            t.data = t.data.to(target)
    return module


def enable_fp8_storage(module: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
                       storage_dtype: torch.dtype = torch.float8_e4m3fn, extra_skip: tuple[str, ...] = ()) -> None:
    """Store weights in float8, cast each layer to `compute_dtype` only while it runs (diffusers' layerwise casting).

    The module is first cast to compute_dtype (so the layers kept out of the cast, like Wan's patch
    embedding, condition embedder and norms, match the activations), then the Linear/Conv/Embedding
    layers are stored in float8. Works on the CPU too (tests), though it only saves memory.
    """
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.models.modeling_utils import ModelMixin

    cast_for_compute(module, compute_dtype)
    if isinstance(module, ModelMixin):
        module.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
    else:
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        apply_layerwise_casting(module, storage_dtype, compute_dtype,
                                skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(extra_skip))


@torch.no_grad()
def _pin_to_cpu(module: nn.Module) -> None:
    """Move every tensor into pinned CPU memory, one at a time (no second full copy of the model)."""
    pin = torch.cuda.is_available()
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.device.type == "cpu" and (not pin or t.is_pinned()):
            continue
        dst = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
        dst.copy_(t.data)
        t.data = dst


def enable_block_offload(transformer, device: str | torch.device, use_stream: bool = True) -> None:
    """DiT blocks live in (pinned) CPU memory and go to `device` one at a time (diffusers' group offload).

    With use_stream the next block is copied on a side CUDA stream while the current one computes.
    `memory_dit_forward` calls the DiT's parts itself and never `transformer.forward`, which is where
    diffusers hangs (1) the group of everything outside the blocks and (2) with streams, the tracer that
    learns the block order for prefetching. So the outer parts (patch embedding, condition embedder,
    head: ~2 % of the weights) stay on the GPU for good, and the blocks' prefetch chain is set in their
    known order here.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.hooks import group_offloading as go

    device = torch.device(device)
    if use_stream:
        _pin_to_cpu(transformer)  # diffusers pins too, but pinning what is already pinned is free
    else:
        transformer.to("cpu")
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=1, use_stream=use_stream)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(go._LAZY_PREFETCH_GROUP_OFFLOADING, recurse=False)
    outer = registry.get_hook(go._GROUP_OFFLOADING)
    if outer is not None:
        outer.group.onload_()  # the outer parts: to the GPU, for good
        registry.remove_hook(go._GROUP_OFFLOADING, recurse=False)
    hooks = []
    for block in transformer.blocks:
        block_registry = HookRegistry.check_if_exists_or_initialize(block)
        block_registry.remove_hook(go._LAYER_EXECUTION_TRACKER, recurse=False)
        hook = block_registry.get_hook(go._GROUP_OFFLOADING)
        if hook is None:
            raise RuntimeError("group offloading did not hook the DiT blocks (diffusers changed?)")
        hooks.append(hook)
    if use_stream:
        for hook in hooks:
            hook.group.non_blocking = True
        for this, nxt in zip(hooks, hooks[1:]):  # block i prefetches block i + 1
            this.next_group = nxt.group
            nxt.group.onload_self = False


def _remove_hooks(module: nn.Module) -> None:
    """Undo diffusers' group offloading hooks (weights stay where they are)."""
    from diffusers.hooks import HookRegistry

    for name in ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker"):
        for sub in module.modules():
            if hasattr(sub, "_diffusers_hook"):
                HookRegistry.check_if_exists_or_initialize(sub).remove_hook(name, recurse=False)


def _set_attention(transformer, requested: str, device: torch.device) -> tuple[str, str]:
    """('sdpa' | 'xformers', note)."""
    if requested == "sdpa":
        return "sdpa", ""
    if device.type != "cuda":
        return "sdpa", f"attention: PyTorch SDPA (xformers only runs on CUDA, device is {device.type})"
    from diffusers.utils import is_xformers_available

    if not is_xformers_available():
        return "sdpa", "attention: PyTorch SDPA (xformers is not installed)"
    try:
        transformer.set_attention_backend("xformers")
    except (RuntimeError, ValueError, ImportError) as err:
        return "sdpa", f"attention: PyTorch SDPA (xformers unusable: {str(err).splitlines()[0]})"
    return "xformers", ""


class TextEncoderOnDevice(TextEncoder):
    """A text encoder whose model is moved to `device` only while it encodes (the `while_used` placement)."""

    def __init__(self, inner: TextEncoder, device: torch.device):
        self.inner, self.compute_device = inner, device
        self.text_dim, self.max_tokens = inner.text_dim, inner.max_tokens

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    def encode(self, prompts: list[str]) -> torch.Tensor:
        old = self.inner.device
        with on_device(self.inner.model, self.compute_device):
            self.inner.device = self.compute_device
            try:
                return self.inner.encode(prompts)
            finally:
                self.inner.device = old

    def null(self, batch: int) -> torch.Tensor:
        return self.inner.null(batch)


class CodecOnDevice(WanLatentCodec):
    """The latent codec with its VAE moved to `device` only while encoding or decoding."""

    def __init__(self, codec: WanLatentCodec, device: torch.device):
        self.__dict__.update(codec.__dict__)
        self.wrapped, self.compute_device = codec, device

    @property
    def device(self) -> torch.device:
        return self.compute_device

    def encode(self, frames, sample=False, generator=None):
        with on_device(self.vae, self.compute_device):
            return super().encode(frames, sample, generator)

    def decode(self, latents):
        with on_device(self.vae, self.compute_device):
            return super().decode(latents)


# ---- applying a profile ---------------------------------------------------------------------------------

@dataclass
class RuntimeInfo:
    """What `apply_profile` did: the pipeline runs on `device` in `dtype`."""

    name: str
    reason: str
    device: torch.device
    dtype: torch.dtype
    attention: str = "sdpa"
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        extra = "".join(f"; {n}" for n in self.notes)
        return f"profile {self.name} on {self.device} ({str(self.dtype).replace('torch.', '')}, attention {self.attention}): {self.reason}{extra}"


@dataclass
class _RuntimeState:
    info: RuntimeInfo
    codec: WanLatentCodec  # the codec before the profile wrapped it
    text_factory: object
    text_encoder: TextEncoder | None
    fp8: bool  # float8 storage cannot be undone


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def reset_runtime(model) -> None:
    """Undo `apply_profile` (hooks and wrappers; weights stay where they are) so another profile can be applied.

    Not possible after a float8 profile (diffusers' layerwise casting cannot be undone): reload the model.
    """
    state: _RuntimeState | None = getattr(model, "_runtime_state", None)
    if state is None:
        return
    if state.fp8:
        raise ValueError(f"the model's weights are stored in float8 by profile {state.info.name!r}; load it again")
    _remove_hooks(model.transformer)
    model.codec = state.codec
    _remove_hooks(model.codec.vae)
    model.text_encoder_factory = state.text_factory
    enc = state.text_encoder if state.text_encoder is not None else model._text_encoder
    if isinstance(enc, TextEncoderOnDevice):
        enc = enc.inner
    if enc is not None and isinstance(getattr(enc, "model", None), nn.Module):
        _remove_hooks(enc.model)
    model._text_encoder = enc
    if state.info.attention != "sdpa":
        model.transformer.reset_attention_backend()
    model._runtime_state = None


def apply_profile(model, name: str = "auto", device: str | torch.device | None = None, *,
                  attention: str | None = None, free_bytes: int | None = None,
                  profiles: dict[str, RuntimeProfile] | None = None, strict_device: bool = True) -> RuntimeInfo:
    """Configure a PFPModel in place for profile `name` ('auto' chooses) on `device` (default: CUDA if any).

    Returns RuntimeInfo; run the pipeline as PFPPipeline(model, info.device, info.dtype).
    strict_device=False lets GPU profiles run on the CPU as an emulation (float8 storage, block
    offload without streams): for tests and the CPU smoke benchmark only.
    """
    profiles = profiles if profiles is not None else load_profiles()
    dev = _resolve_device(device)
    if name == "auto":
        name, reason = ("cpu", f"device is {dev.type} -> cpu (float32)") if dev.type != "cuda" else \
            choose_profile(model, free_bytes if free_bytes is not None else torch.cuda.mem_get_info(dev)[0],
                           profiles=profiles)
    else:
        reason = "chosen by the user"
    prof = get_profile(name, profiles)
    s = prof.settings
    if s.device == "cuda" and dev.type != "cuda":
        if strict_device:
            raise ValueError(f"runtime profile {name!r} needs a CUDA GPU (its weights are placed for GPU memory), "
                             f"but the device is {dev.type}; use --profile cpu (or auto)")
        # emulation: float8 storage and block hooks as on the GPU, compute in float32 (several CPU kernels,
        # e.g. avg_pool3d in φ, have no bfloat16 version)
        f32 = lambda d: d if d.itemsize == 1 else torch.float32  # noqa: E731
        s = replace(s, use_stream=False, compute_dtype=torch.float32, transformer_storage=f32(s.transformer_storage),
                    text_encoder_storage=f32(s.text_encoder_storage), vae_dtype=torch.float32)
    if s.device == "cpu":
        dev = torch.device("cpu")

    state: _RuntimeState | None = getattr(model, "_runtime_state", None)
    if state is not None and state.info.name == name and state.info.device == dev:
        return state.info
    if state is not None and state.fp8:
        # diffusers cannot undo layerwise casting: the weights are float8 now
        raise ValueError(f"the model's weights are stored in float8 by profile {state.info.name!r}; load the model "
                         f"again to switch to {name!r}")
    reset_runtime(model)
    notes: list[str] = []
    is_fp8 = s.transformer_storage.itemsize == 1 or s.text_encoder_storage.itemsize == 1
    new_state = _RuntimeState(None, model.codec, model.text_encoder_factory, model._text_encoder, is_fp8)
    cd = s.compute_dtype

    # DiT: storage dtype (cast where it is: on the CPU before moving, so fp8 never needs bf16 room on the GPU)
    tr = model.transformer
    if s.transformer_storage.itemsize == 1:
        enable_fp8_storage(tr, cd, s.transformer_storage)
    else:
        cast_for_compute(tr, s.transformer_storage)
    if s.transformer_offload == "none":
        tr.to(dev)
    else:
        enable_block_offload(tr, dev, use_stream=s.use_stream and dev.type == "cuda")
    used_attention, note = _set_attention(tr, attention or s.attention, dev)
    if note:
        notes.append(note)

    # φ: small, always resident in the compute dtype
    cast_for_compute(model.memory_encoder, cd).to(dev)

    # VAE
    vae = model.codec.vae
    cast_for_compute(vae, s.vae_dtype)
    if s.vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    if s.vae_placement == "resident" or dev.type != "cuda":
        vae.to(dev)
    else:
        _pin_to_cpu(vae)  # pinned: the copy to the GPU at each use is fast and asynchronous
        model.codec = CodecOnDevice(model.codec, dev)

    # text encoder: configured now if built, else when first built
    def configure(enc: TextEncoder) -> TextEncoder:
        return _configure_text_encoder(enc, s, dev, notes)

    if model._text_encoder is not None:
        model._text_encoder = configure(model._text_encoder)
    else:
        factory = model.text_encoder_factory
        model.text_encoder_factory = lambda: configure(factory())

    info = RuntimeInfo(name, reason, dev, cd, used_attention, prof.description, notes)
    new_state.info = info
    model._runtime_state = new_state
    return info


def _configure_text_encoder(enc: TextEncoder, s: ProfileSettings, dev: torch.device, notes: list[str]) -> TextEncoder:
    module = getattr(enc, "model", None)
    if not isinstance(module, nn.Module):  # e.g. precomputed embeddings: nothing to place
        return enc
    fp8 = s.text_encoder_storage.itemsize == 1
    if fp8 and "T5" not in type(module).__name__:
        notes.append(f"text encoder {type(module).__name__} kept in {str(s.compute_dtype).replace('torch.', '')} "
                     "(float8 storage is only set up for T5 encoders)")
        fp8 = False
    if fp8:
        enable_fp8_storage(module, s.compute_dtype, s.text_encoder_storage, extra_skip=("wo",))  # T5 needs wo unquantised
    else:
        cast_for_compute(module, s.text_encoder_storage)
    placement = s.text_encoder_placement if dev.type == "cuda" else "resident"
    if placement == "resident":
        module.to(dev)
        enc.device = dev
        return enc
    if placement == "while_used":
        _pin_to_cpu(module)
        enc.device = torch.device("cpu")
        return TextEncoderOnDevice(enc, dev)
    from diffusers.hooks import apply_group_offloading

    _pin_to_cpu(module)
    apply_group_offloading(module, onload_device=dev, offload_device=torch.device("cpu"), offload_type="leaf_level",
                           use_stream=s.use_stream)
    enc.device = dev
    return enc


def describe_profiles(dirs: list[str | Path] | None = None) -> str:
    """One line per profile, 'auto' first: for --help texts and the UI."""
    profiles = load_profiles(dirs)
    return "\n".join("auto: chosen from free VRAM and model size" if n == "auto" else f"{n}: {profiles[n].description}"
                     for n in profile_names(dirs))

