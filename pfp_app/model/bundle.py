"""Model configs (one registry, DiT-style) and the bundle the pipeline runs: G, φ, codec, text encoder.

Named configs: `tiny` (tests, `tiny-random`), `default` (the embedded model we train and ship in
assets/), `small` (the paper-evidence benchmarks at CPU scale), `wan2.1-1.3b` and `wan2.1-14b` (real Wan
shapes; weights come from the user's folder).
Every config runs the same code path: diffusers' WanTransformer3DModel + AutoencoderKLWan, our φ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from .memory_dit import MemoryTokens, enable_memory_blocks, memory_dit_forward
from .codec import WanLatentCodec
from .memory_encoder import MemoryEncoder
from .text_encoder import MiniLMTextEncoder, TextEncoder, UMT5TextEncoder
from ..sampling.settings import SAMPLER_FIELDS, SamplerSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = PROJECT_ROOT / "assets" / "pfp-default"
BUNDLE_FILE = "pfp_model.json"


class ModelLoadError(ValueError):
    """A model folder or name that cannot be loaded; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class VideoSpec:
    """What a model generates: frame size, frame rate, segment length, and its text encoder."""

    height: int
    width: int
    fps: int
    segment_latent_frames: int  # latent frames generated per autoregressive segment
    text_encoder: str = "minilm"  # 'minilm' (offline, shipped) or 'umt5' (from a Wan folder)
    text_max_tokens: int = 32


@dataclass
class ModelConfig:
    transformer: dict
    vae: dict
    memory: dict
    video: VideoSpec
    sampler: SamplerSettings  # the model's sampling defaults (pfp_model.json's "sampler")
    notes: str = ""


_WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
_WAN_DIT = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# v2: 32 latent channels (v1: 16). 4x space, 4x time: an 8x-space codec trained for minutes on this data reached
# only 18.7 dB; at 8 fps four frames hold real motion, and 16 channels for four 4x4-pixel frames (12x) capped v1
# near 20 dB on real clips; 32 channels (6x) cost G only a wider patch embedding (its token count is unchanged).
_DEFAULT_LATENT = 32
_DEFAULT_DIT = dict(_WAN_DIT, in_channels=_DEFAULT_LATENT, out_channels=_DEFAULT_LATENT, num_attention_heads=6,
                    attention_head_dim=64, ffn_dim=1024, num_layers=6, text_dim=384, freq_dim=128, rope_max_seq_len=512)
_DEFAULT_VAE = dict(base_dim=32, z_dim=_DEFAULT_LATENT, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True])

_WAN_REST = dict(
    vae=_WAN_VAE,
    memory=dict(rate="4x4x2", variant="proposed", hr_base_channels=128, hr_channels=512, hr_attention_layers=2, hr_heads=8),
    video=VideoSpec(height=480, width=832, fps=16, segment_latent_frames=9, text_encoder="umt5", text_max_tokens=512),
    sampler=SamplerSettings(steps=30, guidance_scale=5.0),
)

MODEL_CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        transformer=dict(_WAN_DIT, in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32,
                         ffn_dim=128, num_layers=2, text_dim=384, freq_dim=64, rope_max_seq_len=256),
        vae=dict(base_dim=8, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]),
        memory=dict(rate="4x4x2", variant="proposed", hr_base_channels=16, hr_channels=64, hr_attention_layers=1, hr_heads=2),
        video=VideoSpec(height=64, width=64, fps=8, segment_latent_frames=3),
        sampler=SamplerSettings(steps=4),
        notes="test-sized; untrained unless loaded from a folder",
    ),
    "default": ModelConfig(
        transformer=_DEFAULT_DIT,
        vae=_DEFAULT_VAE,
        memory=dict(rate="4x4x2", variant="proposed", hr_base_channels=64, hr_channels=192, hr_attention_layers=1, hr_heads=4),
        video=VideoSpec(height=128, width=128, fps=8, segment_latent_frames=5),
        sampler=SamplerSettings(steps=16),
        notes="the embedded default: 128x128 at 8 fps, trained by this project on procedural storyboard clips",
    ),
    "small": ModelConfig(  # the default's codec (shared by the benchmarks) with a smaller G and φ
        transformer=dict(_DEFAULT_DIT, num_attention_heads=4, ffn_dim=768, num_layers=4),
        vae=_DEFAULT_VAE,
        memory=dict(rate="4x4x2", variant="proposed", hr_base_channels=32, hr_channels=128, hr_attention_layers=1, hr_heads=4),
        video=VideoSpec(height=64, width=64, fps=8, segment_latent_frames=5),
        sampler=SamplerSettings(steps=16),
        notes="CPU-sized experiments (benchmarks/*.py --scale cpu): 64x64 with the default model's codec",
    ),
    # the two Wan 2.1 sizes share their codec, φ, video and sampler; only the DiT differs
    "wan2.1-1.3b": ModelConfig(transformer=dict(_WAN_DIT, num_attention_heads=12, attention_head_dim=128,
                                                ffn_dim=8960, num_layers=30), **_WAN_REST),
    "wan2.1-14b": ModelConfig(transformer=dict(_WAN_DIT, num_attention_heads=40, attention_head_dim=128,
                                               ffn_dim=13824, num_layers=40), **_WAN_REST),
}


def build_memory_encoder(transformer: WanTransformer3DModel, memory_cfg: dict) -> MemoryEncoder:
    t = transformer.config
    enc = MemoryEncoder(latent_channels=t.in_channels, hidden_dim=t.num_attention_heads * t.attention_head_dim,
                        patch_size=tuple(t.patch_size), **memory_cfg)
    enc.init_from_transformer(transformer.patch_embedding)
    return enc


@dataclass
class PFPModel:
    """Everything needed to generate and recall: G (Wan DiT), φ, the codec, the text encoder."""

    name: str
    transformer: WanTransformer3DModel
    memory_encoder: MemoryEncoder
    codec: WanLatentCodec
    video: VideoSpec
    trained: bool
    sampler: SamplerSettings = SamplerSettings()  # the model's sampling defaults
    text_encoder_factory: object = None  # () -> TextEncoder, built on first use (it is the slowest load)
    _text_encoder: TextEncoder | None = field(default=None, repr=False)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            self._text_encoder = self.text_encoder_factory()
        return self._text_encoder

    @property
    def label(self) -> str:
        return self.name if self.trained else f"{self.name} (UNTRAINED: random weights, output is noise-like)"

    def null_text(self, batch: int) -> torch.Tensor:
        """The unconditional (all-zero) text embedding, without loading the text encoder."""
        return torch.zeros(batch, self.video.text_max_tokens, self.transformer.config.text_dim)

    def velocity(self, x, timestep, text, memory: MemoryTokens | None, frame_positions) -> torch.Tensor:
        return memory_dit_forward(self.transformer, x, timestep, text, memory, frame_positions)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer, "memory_encoder": self.memory_encoder, "vae": self.codec.vae}

    def eval(self) -> "PFPModel":
        for m in self.modules().values():
            m.eval().requires_grad_(False)
        return self

    def to(self, device) -> "PFPModel":
        for m in self.modules().values():
            m.to(device)
        return self

    def save(self, folder: str | Path, max_shard_size: str = "15MB", dtype: torch.dtype | None = None) -> Path:
        """Our folder layout: pfp_model.json + transformer/, memory_encoder/, vae/ (safetensors, sharded)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for sub, module in self.modules().items():
            src = module if dtype is None else _cast_copy(module, dtype)
            src.save_pretrained(folder / sub, safe_serialization=True, max_shard_size=max_shard_size)
        (folder / BUNDLE_FILE).write_text(json.dumps(bundle_record(self.name, self.video, self.sampler), indent=2))
        return folder


def _cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def _text_factory(video: VideoSpec, folder: Path | None):
    if video.text_encoder == "minilm":
        return lambda: MiniLMTextEncoder(max_tokens=video.text_max_tokens)
    if video.text_encoder == "umt5":
        if folder is None:
            raise ModelLoadError("the umT5 text encoder needs a Wan 2.1 folder with text_encoder/ and tokenizer/")
        return lambda: UMT5TextEncoder(folder, max_tokens=video.text_max_tokens)
    raise ModelLoadError(f"unknown text encoder {video.text_encoder!r}")


def build_random_model(config_name: str = "tiny", seed: int = 0) -> PFPModel:
    """A seeded, randomly initialised model of a named config (tests, benchmarks, `tiny-random`)."""
    if config_name not in MODEL_CONFIGS:
        raise ModelLoadError(f"unknown model config {config_name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[config_name]
    torch.manual_seed(seed)
    transformer = enable_memory_blocks(WanTransformer3DModel(**cfg.transformer))
    vae = AutoencoderKLWan(**_vae_kwargs(cfg.vae))
    encoder = build_memory_encoder(transformer, cfg.memory)
    return PFPModel(f"{config_name}-random", transformer, encoder, WanLatentCodec(vae), cfg.video, trained=False,
                    sampler=cfg.sampler, text_encoder_factory=_text_factory(cfg.video, None)).eval()


def _vae_kwargs(vae_cfg: dict) -> dict:
    z = vae_cfg["z_dim"]
    return dict(vae_cfg, latents_mean=[0.0] * z, latents_std=[1.0] * z) if z != 16 else dict(vae_cfg)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelLoadError(f"model folder is incomplete: {what} not found at '{path}'")
    return path


def _load_part(cls, folder: Path, sub: str, **kwargs):
    part = _require(folder / sub, f"{sub}/")
    _require(part / "config.json", f"{sub}/config.json")
    if not any(part.glob("*.safetensors")):
        raise ModelLoadError(f"no safetensors weights in '{part}' (pickle checkpoints are refused)")
    try:
        return cls.from_pretrained(part, use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelLoadError(f"cannot load {sub}/ from '{folder}': {str(err).splitlines()[0]}") from err


def load_model(spec: str | Path = "default", memory_dir: str | Path | None = None, seed: int = 0,
               torch_dtype: torch.dtype | None = None, new_memory: dict | None = None) -> PFPModel:
    """`tiny-random` (or `<config>-random`), `default` (assets/pfp-default), our folder, or a Wan 2.1 folder.

    A Wan 2.1 diffusers folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/) needs
    φ weights: memory_encoder/ inside it or `memory_dir` (training passes `new_memory`, a φ config, to start
    one from scratch instead). Nothing is ever downloaded.
    """
    spec = str(spec)
    if spec.endswith("-random"):
        return build_random_model(spec[: -len("-random")], seed)
    folder = DEFAULT_MODEL_DIR if spec == "default" else Path(spec).expanduser()
    if spec == "default" and not folder.exists():
        raise ModelLoadError(f"the embedded default model is missing at '{folder}'; use --model tiny-random for an untrained test model")
    if not folder.is_dir():
        raise ModelLoadError(f"model folder '{folder}' does not exist (or is not a folder)")
    kw = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    if (folder / BUNDLE_FILE).exists():
        try:
            meta = json.loads((folder / BUNDLE_FILE).read_text())
            video, sampler = read_bundle_record(meta)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"'{folder / BUNDLE_FILE}' is not a valid PFP model description: {err}") from err
        name, trained, text_folder = meta.get("name", folder.name), True, None
    elif (folder / "model_index.json").exists():
        video, sampler = _wan_video_spec(folder)
        name, trained, text_folder = f"wan2.1:{folder.name}", True, folder
        for sub in ("text_encoder", "tokenizer"):
            _require(folder / sub, f"{sub}/")
    else:
        raise ModelLoadError(f"'{folder}' is neither a PFP model folder ({BUNDLE_FILE}) nor a Wan 2.1 diffusers folder (model_index.json)")
    transformer = enable_memory_blocks(_load_part(WanTransformer3DModel, folder, "transformer", **kw))
    vae = _load_part(AutoencoderKLWan, folder, "vae", **kw)
    mem_root = Path(memory_dir) if memory_dir is not None else folder
    # by its config, not the folder: a copied tree can hold an empty memory_encoder/ (a device call that left φ behind)
    has_memory = (mem_root / "memory_encoder" / "config.json").exists() or (mem_root / "config.json").exists()
    if not has_memory and new_memory is not None:
        return PFPModel(name, transformer, build_memory_encoder(transformer, new_memory), WanLatentCodec(vae), video,
                        trained, sampler, text_encoder_factory=_text_factory(video, text_folder)).eval()
    if not has_memory:
        raise ModelLoadError(f"no memory encoder (φ) weights: expected '{mem_root / 'memory_encoder'}'; "
                             "train one with `python -m pfp_app train` or pass --memory DIR")
    encoder = (_load_part(MemoryEncoder, mem_root, "memory_encoder", **kw)
               if (mem_root / "memory_encoder" / "config.json").exists()
               else _load_part(MemoryEncoder, mem_root.parent, mem_root.name, **kw))
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    if encoder.config.hidden_dim != hidden or encoder.config.latent_channels != transformer.config.in_channels:
        raise ModelLoadError(f"memory encoder does not match the transformer: φ outputs width {encoder.config.hidden_dim} "
                             f"from {encoder.config.latent_channels} latent channels, the DiT has width {hidden} and "
                             f"{transformer.config.in_channels} channels")
    return PFPModel(name, transformer, encoder, WanLatentCodec(vae), video, trained, sampler,
                    text_encoder_factory=_text_factory(video, text_folder)).eval()


def bundle_record(name: str, video: VideoSpec, sampler: SamplerSettings) -> dict:
    """pfp_model.json: the model's name, what it generates and its sampling defaults."""
    return {"name": name, "video": asdict(video), "sampler": sampler.to_record()}


def read_bundle_record(meta: dict) -> tuple[VideoSpec, SamplerSettings]:
    """(VideoSpec, SamplerSettings) of a pfp_model.json. Folders written before the sampler had its own entry keep
    their sampling fields inside "video": they are split off."""
    video = dict(meta["video"])
    legacy = {k: video.pop(k) for k in list(video) if k in SAMPLER_FIELDS}
    return VideoSpec(**video), SamplerSettings.from_record({**legacy, **meta.get("sampler", {})})


def _wan_video_spec(folder: Path) -> tuple[VideoSpec, SamplerSettings]:
    """A Wan 2.1 folder's VideoSpec and sampler: the 1.3B config's, or the user's own `pfp_video.json` (resolution,
    segment length, and any sampler field) beside model_index.json."""
    cfg = MODEL_CONFIGS["wan2.1-1.3b"]
    path = folder / "pfp_video.json"  # optional: a user's own resolution / segment length
    if not path.exists():
        return cfg.video, cfg.sampler
    override = json.loads(path.read_text())
    video = {**asdict(cfg.video), **{k: v for k, v in override.items() if k not in SAMPLER_FIELDS}}
    sampler = SamplerSettings.from_record({k: v for k, v in override.items() if k in SAMPLER_FIELDS}, cfg.sampler)
    return VideoSpec(**video), sampler
