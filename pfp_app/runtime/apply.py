"""Applying a runtime profile to a model: `apply_profile` configures a PFPModel in place (the DiT's storage and
offload, φ, the VAE's dtype, tiling and placement, the text encoder's storage and placement, attention) and says
what it did (`RuntimeInfo`); `reset_runtime` undoes it so that another profile can be applied.

Attention is PyTorch SDPA unless a profile (or `apply_profile(attention=...)`) asks for xformers; that
is used only where xformers is installed and the device is CUDA, otherwise we stay on SDPA and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from ..model.codec import WanLatentCodec
from ..model.text_encoder import TextEncoder
from .footprint import choose_profile
from .offload import cast_for_compute, enable_block_offload, enable_fp8_storage, on_device, pin_to_cpu, remove_hooks
from .profiles import ProfileSettings, RuntimeProfile, get_profile, load_profiles


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
    remove_hooks(model.transformer)
    model.codec = state.codec
    remove_hooks(model.codec.vae)
    model.text_encoder_factory = state.text_factory
    enc = state.text_encoder if state.text_encoder is not None else model._text_encoder
    if isinstance(enc, TextEncoderOnDevice):
        enc = enc.inner
    if enc is not None and isinstance(getattr(enc, "model", None), nn.Module):
        remove_hooks(enc.model)
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
        pin_to_cpu(vae)  # pinned: the copy to the GPU at each use is fast and asynchronous
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
        pin_to_cpu(module)
        enc.device = torch.device("cpu")
        return TextEncoderOnDevice(enc, dev)
    from diffusers.hooks import apply_group_offloading

    pin_to_cpu(module)
    apply_group_offloading(module, onload_device=dev, offload_device=torch.device("cpu"), offload_type="leaf_level",
                           use_stream=s.use_stream)
    enc.device = dev
    return enc
