"""Building blocks of the runtime profiles: where a module's weights live and in which dtype.

`on_device` (a module on a device only inside a block), `cast_for_compute` (cast in place, keeping the
modules a model marks as float32-only), `enable_fp8_storage` (float8 weights cast layer by layer for compute),
`pin_to_cpu`, `enable_block_offload` (DiT blocks streamed from pinned CPU memory) and `remove_hooks`
(undo diffusers' offloading hooks).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


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
def pin_to_cpu(module: nn.Module) -> None:
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
        pin_to_cpu(transformer)  # diffusers pins too, but pinning what is already pinned is free
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


def remove_hooks(module: nn.Module) -> None:
    """Undo diffusers' group offloading hooks (weights stay where they are)."""
    from diffusers.hooks import HookRegistry

    for name in ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker"):
        for sub in module.modules():
            if hasattr(sub, "_diffusers_hook"):
                HookRegistry.check_if_exists_or_initialize(sub).remove_hook(name, recurse=False)
