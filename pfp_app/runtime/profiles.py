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

This module reads the profile files; `footprint.py` sizes a model and makes the `auto` choice, `offload.py`
has the building blocks (moving, casting, float8 storage, block offload) and `apply.py` applies a profile to a
model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = PROJECT_ROOT / "presets" / "profiles"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
_TRANSFORMER_OFFLOAD = ("none", "block")
_PLACEMENTS = {"text_encoder": ("resident", "while_used", "offload"), "vae": ("resident", "while_used")}
_ATTENTION = ("sdpa", "xformers", "auto")


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
