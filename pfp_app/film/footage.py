"""Footage: a creator's video, a folder of stills or one image, as the history before the storyboard's first shot.

The footage is resized and resampled to the model's size and frame rate (the video with the memory
inspector's clip preparation, `recall_clip.prepare_clip`; each still held `still_seconds`), trimmed to
1 + 4k frames (what the causal codec needs) and encoded ONCE to latents. Generation then starts with those
latents as its history: every generated segment sees the footage through φ exactly as it sees earlier
generated segments, the first segment sits at the time positions right after the footage, and its pixels are
decoded with the footage's last latent frames as the causal decoder's warm-up, the way segments are joined
(nothing is re-encoded from pixels at the join). Storyboard times count from the footage's end.

In a project (all written at once through a temporary folder, so a failure leaves nothing half-written):
  footage/source.EXT or footage/source/  the creator's file(s), copied (size-checked like uploads)
  footage/latents.safetensors            latents (C, T', H', W') + what they were made from
  footage/footage.mp4                    the prepared frames: what the model sees (previews, export, inspector)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .project import Project
from .recall_clip import prepare_clip
from .storyboard import MAX_SECONDS
from ..io.video import MAX_UPLOAD_BYTES, VideoReadError, frames_to_tensor, read_video, video_info, write_mp4

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_STILL_SECONDS = 2.0
MAX_STILL_SECONDS = 60.0
MAX_FOOTAGE_SECONDS = MAX_SECONDS  # longer footage: its last 10 minutes are kept, as a storyboard's limit
MIN_FOOTAGE_LATENTS = 2  # the first segment's decoder warm-up (causal_decode.WARMUP_LATENTS) needs 2
FOOTAGE_DIR = "footage"


class FootageError(ValueError):
    """Footage that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class FootageSource:
    """A checked footage path (before any model is loaded)."""

    path: Path
    kind: str  # 'video' | 'images'
    images: tuple[Path, ...]  # the stills, in order ('images' only)
    seconds: float  # duration before resampling (stills: count x still_seconds)
    still_seconds: float
    num_bytes: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Footage:
    """Footage prepared for a model: its pixels and their latents."""

    frames: torch.Tensor  # (3, T, H, W) in [-1, 1], T = 1 + 4k: what the model sees
    latents: torch.Tensor  # (1, C, T', H', W')
    fps: float
    source_name: str
    note: str = ""  # e.g. 'kept the last 600 s'

    @property
    def seconds(self) -> float:
        """Duration on the film's time line: the storyboard starts here."""
        return self.frames.shape[1] / self.fps

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def check_still_seconds(still_seconds: float) -> float:
    try:
        s = float(still_seconds)
    except (TypeError, ValueError):
        raise FootageError(f"the still duration must be a number of seconds, got {still_seconds!r}") from None
    if not 0 < s <= MAX_STILL_SECONDS:
        raise FootageError(f"the still duration must be above 0 and at most {MAX_STILL_SECONDS:g} s, got {s:g}")
    return s


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size  # (W, H)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise FootageError(f"'{path.name}' is not a readable image ({err.__class__.__name__})") from None


def check_footage(path: str | Path | None, still_seconds: float = DEFAULT_STILL_SECONDS) -> FootageSource:
    """Validate footage before the model loads: one clear FootageError per problem.

    A video (not too large, at least 2 frames), one image, or a folder of images of one size (taken in name
    order; other files in the folder are ignored)."""
    if not path:
        raise FootageError("no footage given")
    p = Path(path)
    if not p.exists():
        raise FootageError(f"footage '{p}' not found")
    if p.is_dir():
        images = tuple(sorted((q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES),
                              key=_natural_key))
        if not images:
            raise FootageError(f"folder '{p.name}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _check_images(p, images, still_seconds)
    size = p.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise FootageError(f"'{p.name}' is larger than the upload limit ({size:,} bytes; at most 2 GiB)")
    if size == 0:
        raise FootageError(f"'{p.name}' is empty (0 bytes)")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return _check_images(p, (p,), still_seconds)
    try:
        info = video_info(p)
    except VideoReadError:
        raise FootageError(f"'{p.name}' is neither a video nor an image OpenCV/FFmpeg can read") from None
    if info.num_frames < 2:
        raise FootageError(f"'{p.name}' has only {info.num_frames} frame: footage needs motion; use it as a still "
                           "image (PNG/JPEG) instead")
    return FootageSource(p, "video", (), info.duration, 0.0, size)


def _check_images(root: Path, images: tuple[Path, ...], still_seconds: float) -> FootageSource:
    s = check_still_seconds(still_seconds)
    total = sum(q.stat().st_size for q in images)
    if total > MAX_UPLOAD_BYTES:
        raise FootageError(f"the images in '{root.name}' are larger than the upload limit ({total:,} bytes; at most 2 GiB)")
    first = _image_size(images[0])
    for q in images[1:]:
        size = _image_size(q)
        if size != first:
            raise FootageError(f"the images differ in size: '{images[0].name}' is {first[0]}×{first[1]}, '{q.name}' is "
                               f"{size[0]}×{size[1]}; give stills of one size")
    return FootageSource(root, "images", images, len(images) * s, s, total)


def _read_still(path: Path, height: int, width: int) -> np.ndarray:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)  # as read_video resizes: (H, W, 3)


def _trim(frames: np.ndarray, temporal_ratio: int) -> np.ndarray:
    """Keep the last 1 + r k frames (the codec's block structure), ending at the footage's end."""
    keep = 1 + temporal_ratio * ((len(frames) - 1) // temporal_ratio)
    return frames[len(frames) - keep :]


def prepared_frames(pipe, source: FootageSource) -> tuple[torch.Tensor, str]:
    """(frames (3, T, H, W) in [-1, 1] at the model's size and rate, T = 1 + r k; a note) of checked footage."""
    v, r = pipe.model.video, pipe.model.codec.temporal_ratio
    note = ""
    if source.kind == "video":
        seconds = min(source.seconds, MAX_FOOTAGE_SECONDS)
        if seconds < source.seconds:
            note = f"kept the last {MAX_FOOTAGE_SECONDS:g} s of {source.seconds:.1f} s"
        frames = video_tail(pipe, source.path, source.seconds, seconds)
    else:
        hold = max(1, round(source.still_seconds * v.fps))
        stills = [_read_still(q, v.height, v.width) for q in source.images]
        frames = frames_to_tensor(_trim(np.repeat(np.stack(stills), hold, axis=0), r))
    if frames.shape[1] < pipe.model.codec.pixel_frames(MIN_FOOTAGE_LATENTS):
        need = pipe.model.codec.pixel_frames(MIN_FOOTAGE_LATENTS) / v.fps
        raise FootageError(f"'{source.name}' is too short: {frames.shape[1]} frame(s) at the model's {v.fps} fps; footage "
                           f"needs at least {need:.2f} s" + (" (raise the still duration)" if source.kind == "images" else ""))
    return frames, note


def video_tail(pipe, path: Path, duration: float, seconds: float) -> torch.Tensor:
    """The last `seconds` of a video prepared as the memory inspector prepares uploads: (3, T, H, W), T = 1 + r k.

    Some files announce more frames than they hold (OpenCV's count comes from the header), so a read that
    starts `seconds` before the announced end can find nothing: then the whole video is read and its tail kept."""
    try:
        return prepare_clip(pipe, path, duration, seconds).frames
    except VideoReadError:
        frames = prepare_clip(pipe, path, duration, duration).frames  # from the start: every frame the file holds
        n = 1 + pipe.model.codec.temporal_ratio * ((int(seconds * pipe.model.video.fps)) // pipe.model.codec.temporal_ratio)
        return frames[:, -n:]


@torch.no_grad()
def encode_frames(pipe, frames: torch.Tensor) -> torch.Tensor:
    """frames (3, T, H, W), T = 1 + r k -> latents (1, C, T', H', W'), encoded once."""
    return pipe.model.codec.encode(frames[None].to(pipe.device)).cpu()


def prepare_footage(pipe, path: str | Path, still_seconds: float = DEFAULT_STILL_SECONDS) -> Footage:
    """Checked, resampled and encoded footage, ready for `PFPPipeline.generate(footage=...)` or `save_footage`."""
    source = check_footage(path, still_seconds)
    frames, note = prepared_frames(pipe, source)
    return Footage(frames, encode_frames(pipe, frames), float(pipe.model.video.fps), source.name, note)


def footage_from_frames(pipe, frames_uint8: np.ndarray, name: str = "frames") -> Footage:
    """Footage from frames already at the model's size and rate (uint8 (T, H, W, 3)), e.g. a world render."""
    r = pipe.model.codec.temporal_ratio
    frames = frames_to_tensor(_trim(np.asarray(frames_uint8), r))
    if frames.shape[1] < pipe.model.codec.pixel_frames(MIN_FOOTAGE_LATENTS):
        raise FootageError(f"'{name}' is too short: {frames.shape[1]} frame(s)")
    return Footage(frames, encode_frames(pipe, frames), float(pipe.model.video.fps), name)


# ---- in a project -------------------------------------------------------------------------------------

def footage_dir(project: Project) -> Path:
    return project.folder / FOOTAGE_DIR


def footage_latents_path(project: Project) -> Path:
    return footage_dir(project) / "latents.safetensors"


def footage_video_path(project: Project) -> Path:
    return footage_dir(project) / "footage.mp4"


def has_footage(project: Project | None) -> bool:
    return project is not None and footage_latents_path(project).is_file()


def _sha256(paths) -> str:
    h = hashlib.sha256()
    for q in paths:
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def save_footage(project: Project, footage: Footage, source: FootageSource | None = None) -> None:
    """Write footage into the project: the source copy, latents and prepared frames, all or nothing.

    Refused when the project already holds generated segments (they were made from another history)."""
    n = project.finished_segments()
    if n:
        raise FootageError(f"project '{project.folder.name}' already holds {n} generated segment(s) made without "
                           "this footage; start a new project to continue from it (nothing was changed)")
    final = footage_dir(project)
    tmp = project.folder / f".{FOOTAGE_DIR}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        meta = {"source": footage.source_name, "frames": str(footage.num_frames), "fps": str(footage.fps),
                "note": footage.note}
        if source is not None:
            if source.path.is_dir():
                (tmp / "source").mkdir()
                for q in source.images:
                    shutil.copyfile(q, tmp / "source" / q.name)
            else:
                shutil.copyfile(source.path, tmp / f"source{source.path.suffix.lower()}")
            meta.update(source_record(source)["footage"], kind=source.kind, source=footage.source_name)
        save_file({"latents": footage.latents[0].float().contiguous()}, str(tmp / "latents.safetensors"), metadata=meta)
        write_mp4(tmp / "footage.mp4", footage.frames, footage.fps, crf=12)
        old = final.with_name(f".{FOOTAGE_DIR}.{uuid.uuid4().hex[:8]}.old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_footage(project: Project) -> None:
    n = project.finished_segments()
    if n:
        raise FootageError(f"project '{project.folder.name}' holds {n} generated segment(s) that continue its footage; "
                           "start a new project instead (nothing was changed)")
    shutil.rmtree(footage_dir(project), ignore_errors=True)


def load_footage_latents(project: Project | None) -> torch.Tensor | None:
    """Latents (1, C, T', H', W') of the project's footage, or None."""
    if not has_footage(project):
        return None
    return load_file(str(footage_latents_path(project)))["latents"][None]


def footage_meta(project: Project | None) -> dict:
    """What the project's footage was made from ({} without footage)."""
    if not has_footage(project):
        return {}
    with safe_open(str(footage_latents_path(project)), "pt") as f:
        return dict(f.metadata() or {})


def footage_record(project: Project | None) -> dict:
    """The footage's entry in settings.json ({} without footage, so older projects compare equal)."""
    meta = footage_meta(project)
    if not meta:
        return {}
    return {"footage": {k: meta[k] for k in RECORD_KEYS if k in meta}}


RECORD_KEYS = ("source", "sha256", "still_seconds")


def source_record(source: FootageSource) -> dict:
    """The settings.json entry footage from `source` will have (to compare before anything is encoded)."""
    sha = _sha256(source.images if source.kind == "images" else (source.path,))
    return {"footage": {"source": source.name, "sha256": sha, "still_seconds": str(source.still_seconds)}}


def footage_frames(project: Project | None) -> torch.Tensor | None:
    """The prepared footage pixels (3, T, H, W) in [-1, 1] as stored in footage.mp4, or None."""
    if not has_footage(project):
        return None
    frames, _ = read_video(footage_video_path(project))
    return frames_to_tensor(frames)


EXPORT_WITH_FOOTAGE = "with the footage"
EXPORT_GENERATED_ONLY = "generated part only"


def footage_seconds(project: Project | None, fps: float) -> float:
    meta = footage_meta(project)
    return int(meta["frames"]) / fps if meta else 0.0


@torch.no_grad()
def history_with_footage(pipe, project: Project) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(latents (1, C, T', H', W'), frames (3, T, H, W)) of the whole history: footage, then every finished
    segment decoded as it was previewed (continuing the footage). The footage's frames are its prepared pixels:
    the memory inspector compares recall against the creator's own frames."""
    prefix = load_footage_latents(project)
    n = project.finished_segments()
    generated = project.load_history(n) if n else None
    if prefix is None:
        if generated is None:
            return None, None
        return generated, pipe.decode_history(generated.to(pipe.device)).cpu()
    parts = [footage_frames(project)]
    history = prefix
    if generated is not None:
        history = torch.cat([prefix, generated], dim=2)
        parts.append(decode_after(pipe, prefix, generated))
    return history, torch.cat(parts, dim=1)


def decode_after(pipe, prefix: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Pixels (3, 4 T', H, W) of generated latents that continue `prefix` latents, decoded as generation
    decoded them: one causal pass warmed up on the prefix's last latents."""
    from ..model.causal_decode import StreamingDecoder

    decoder = StreamingDecoder(pipe.model.codec)
    decoder.warm_up(prefix.to(pipe.device))
    return decoder.decode(generated.to(pipe.device))[0].cpu()


def describe(footage_frames_count: int, fps: float, memory_tokens: int) -> str:
    return (f"{footage_frames_count} frames = {footage_frames_count / fps:.2f} s at {fps:g} fps · {memory_tokens:,} "
            "memory tokens · storyboard times count from its end")


def footage_memory_tokens(pipe, latents: torch.Tensor) -> int:
    """Memory tokens φ makes of the footage alone (what it adds to every segment's context)."""
    with torch.no_grad():
        return pipe.model.memory_encoder(latents.to(pipe.device, pipe.dtype)).num_tokens


__all__ = ["Footage", "FootageError", "FootageSource", "check_footage", "prepare_footage", "save_footage",
           "load_footage_latents", "history_with_footage", "footage_from_frames"]
