"""The real-footage bank: photographs and clips from packages installed on this machine, never downloaded.

`python -m pfp_app bank --out data/bank` rebuilds it from what Debian and PyPI installed (nothing
third-party is committed to the repository; the command is the record of what the bank holds):

    photos/train/*.jpg    photos/heldout/*.jpg   crops CROP x CROP at several scales of each photograph
    clips/train/*.mp4     clips/heldout/*.mp4    real clips resampled to the model's size and frame rate
    bank.json             sources, licences, the held-out split, counts and sizes

Held out of all training: the clips `Megamind.avi` (and its re-encoded copy `Megamind_bugy.avi`, dropped
from the bank altogether) and `cup.mp4` from opencv-doc, and every photograph whose name hashes into the
held-out tenth (`is_heldout_photo`). The bank fits the GPU machine's 64 MiB transfer with room to spare
(JPEG crops, H.264 clips at CRF 12).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .video_folder import _crop_resize

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# (package, folder, licence as its Debian copyright file or README states it, grouping)
# grouping 'file': every image is a photograph of its own; 'folder': a folder holds one picture at several
# resolutions (wallpapers, themes), of which only the largest is taken.
PHOTO_SOURCES = (
    ("opencv-doc", "/usr/share/doc/opencv-doc/examples/data", "Apache-2.0 / BSD-3-Clause (OpenCV sample data)", "file"),
    ("scikit-image", "skimage:data", "BSD-3-Clause / CC0 / public domain, per image (skimage/data/README.txt)", "file"),
    ("gnome-backgrounds", "/usr/share/backgrounds/gnome", "CC-BY-SA 3.0 / GPL (Debian copyright file)", "file"),
    ("mate-backgrounds", "/usr/share/backgrounds/mate", "GPL-2+ / CC-BY-SA (Debian copyright file)", "file"),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers", "LGPL-3 / CC-BY-SA 4.0 (Debian copyright file)", "folder"),
    ("desktop-base", "/usr/share/desktop-base", "GPL-2+ / CC-BY-SA 4.0 (Debian copyright file)", "folder"),
)
OPENCV_CLIPS = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_HTML = "/usr/share/doc/opencv-doc/opencv4/html"
CLIP_SOURCES = ("Megamind.avi", "tree.avi", "vtest.avi", "box.mp4.gz", "cup.mp4.gz")  # opencv-doc, Apache-2.0/BSD
HELDOUT_CLIPS = ("Megamind", "cup")
DROPPED_CLIPS = ("Megamind_bugy",)  # the same footage as Megamind.avi: it would leak the held-out clip
SKIP_NAME_PARTS = ("screenshot", "preview", "logo", "mask", "gradient", "_gray", "gt.png")
MIN_SIDE = 160  # smaller pictures are icons or test patterns
HELDOUT_PHOTO_BUCKET = 10  # one tenth of the photographs (by name hash) is held out


class BankError(ValueError):
    """A bank that cannot be built or read; the message says what to install or rebuild."""


# the storyboard world's places are these scikit-image photos: they are trained on in every world clip
WORLD_PHOTOS = ("astronaut", "brick", "chelsea", "coffee", "grass", "gravel", "rocket")


def is_heldout_photo(name: str) -> bool:
    if name.startswith("scikit-image-") and name[len("scikit-image-"):] in WORLD_PHOTOS:
        return False
    return zlib.crc32(name.encode()) % HELDOUT_PHOTO_BUCKET == 0


def _skimage_data_dir() -> Path | None:
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data"


def find_photos(sources=PHOTO_SOURCES) -> list[tuple[str, Path, str, str]]:
    """(package, path, licence, name) of every usable photograph installed, one per picture."""
    found = []
    for package, folder, licence, grouping in sources:
        root = _skimage_data_dir() if folder == "skimage:data" else Path(folder)
        if root is None or not root.is_dir():
            continue
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file()
                       and not any(s in p.name.lower() for s in SKIP_NAME_PARTS))
        if grouping == "folder":  # the largest file of each top-level folder (one picture, many sizes)
            best: dict[str, Path] = {}
            for p in files:
                key = p.relative_to(root).parts[0]
                if key not in best or p.stat().st_size > best[key].stat().st_size:
                    best[key] = p
            found += [(package, best[k], licence, f"{package}-{k}") for k in sorted(best)]
            continue
        found += [(package, p, licence, f"{package}-{p.stem}") for p in files]
    return found


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (H, W, 3) BGR uint8; grey pictures come back as 3 channels
    if img is None or min(img.shape[:2]) < MIN_SIDE or float(img.std()) < 8.0:
        return None
    return img[:, :, ::-1]


def photo_crops(img: np.ndarray, crop: int, per_scale: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Square crops at several scales: the picture's short side resized to crop x (1, 1.6, 2.8), and
    `per_scale` random crops at each (fewer where the picture is small). (crop, crop, 3) uint8 each."""
    out = []
    short = min(img.shape[:2])
    for factor in (1.0, 1.6, 2.8):
        side = int(round(crop * factor))
        if side > short * 1.05:  # never upsample a small picture
            break
        scale = side / short
        resized = cv2.resize(img, (max(crop, round(img.shape[1] * scale)), max(crop, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        n = 1 if factor == 1.0 else per_scale
        for _ in range(n):
            y = int(rng.integers(0, resized.shape[0] - crop + 1))
            x = int(rng.integers(0, resized.shape[1] - crop + 1))
            out.append(np.ascontiguousarray(resized[y : y + crop, x : x + crop]))
    return out


def _clip_paths() -> list[Path]:
    paths = []
    for name in CLIP_SOURCES:
        for root in (OPENCV_CLIPS, OPENCV_HTML):
            if (Path(root) / name).exists():
                paths.append(Path(root) / name)
                break
    return paths


def _resample_clip(path: Path, size: int, fps: float) -> np.ndarray:
    """A whole real clip (T, size, size, 3) uint8: centre-cropped square, INTER_AREA, nearest frame at `fps`.
    Counts the frames it can decode (headers overstate some files' length)."""
    cap = cv2.VideoCapture(str(path))
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(_crop_resize(f, (size, size)))  # centre square, INTER_AREA, RGB (as video folders do)
    cap.release()
    if not frames:
        raise BankError(f"cannot decode any frame of '{path}'")
    n = max(1, int((len(frames) - 1) * fps / src_fps) + 1)
    idx = np.minimum(np.round(np.arange(n) * src_fps / fps).astype(int), len(frames) - 1)
    return np.stack([frames[i] for i in idx])


def build_bank(out: str | Path, size: int = 128, fps: float = 8.0, crop: int = 192, per_scale: int = 2,
               max_photos: int | None = None, seed: int = 0, sources=PHOTO_SOURCES, clips: bool = True,
               clip_paths: list[Path] | None = None, log=print) -> dict:
    """Build the bank in `out` (replaced atomically); returns its manifest (also written as bank.json).
    `clip_paths`: the real clips (default: opencv-doc's); names in HELDOUT_CLIPS are held out."""
    from ..io.video import write_mp4

    out = Path(out)
    photos = find_photos(sources)
    if max_photos is not None:
        photos = photos[:max_photos]
    if not photos:
        raise BankError("no photographs found: install them with `apt-get install opencv-doc gnome-backgrounds "
                        "mate-backgrounds plasma-workspace-wallpapers desktop-base` (scikit-image's are used too)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bank-", dir=out.parent))  # beside out: the final rename is atomic
    rng = np.random.default_rng(seed)
    manifest = {"size": size, "fps": fps, "crop": crop, "photos": [], "clips": [],
                "heldout_rule": f"crc32(name) % {HELDOUT_PHOTO_BUCKET} == 0; clips {', '.join(HELDOUT_CLIPS)}"}
    try:
        for split in ("train", "heldout"):
            (tmp / "photos" / split).mkdir(parents=True)
            (tmp / "clips" / split).mkdir(parents=True)
        for package, path, licence, name in photos:
            img = _read_rgb(path)
            if img is None:
                continue
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            split = "heldout" if is_heldout_photo(name) else "train"
            crops = photo_crops(img, crop, per_scale, rng)
            for k, c in enumerate(crops):
                cv2.imwrite(str(tmp / "photos" / split / f"{name}-{k}.jpg"), c[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 93])
            manifest["photos"].append({"name": name, "package": package, "source": str(path), "licence": licence,
                                       "split": split, "crops": len(crops)})
        if clips:
            paths = _clip_paths() if clip_paths is None else clip_paths
            if not paths:  # a bank without them trains codecs on no real motion and cannot score `evaluate --bank`
                log(f"warning: no real clips found in {OPENCV_CLIPS} or {OPENCV_HTML} (`apt-get install opencv-doc`): "
                    "this bank holds photographs only")
            for path in paths:
                stem = path.name.split(".")[0]
                if stem in DROPPED_CLIPS:
                    continue
                src = path
                if path.suffix == ".gz":  # the html folder's clips are gzipped MP4s
                    src = tmp / path.name[:-3]
                    with gzip.open(path, "rb") as fi, open(src, "wb") as fo:
                        shutil.copyfileobj(fi, fo)
                frames = _resample_clip(src, size, fps)
                if src != path:
                    src.unlink()
                split = "heldout" if stem in HELDOUT_CLIPS else "train"
                write_mp4(tmp / "clips" / split / f"{stem}.mp4", frames, fps=fps, crf=12)
                manifest["clips"].append({"name": stem, "package": "opencv-doc", "source": str(path),
                                          "licence": "Apache-2.0 / BSD-3-Clause", "split": split,
                                          "frames": int(len(frames)), "seconds": round(len(frames) / fps, 2)})
        files = [p for p in tmp.rglob("*") if p.is_file()]
        manifest["bytes"] = int(sum(p.stat().st_size for p in files))
        manifest["counts"] = {f"{kind}_{split}": len(list((tmp / kind / split).iterdir()))
                              for kind in ("photos", "clips") for split in ("train", "heldout")}
        (tmp / "bank.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"bank: {manifest['counts']} ({manifest['bytes'] / 2**20:.1f} MiB) in {out}")
    return manifest


@dataclass
class Bank:
    """A built bank in memory: photo crops (N, 3, S, S) uint8 and real clips, each (3, T, H, W) uint8."""

    photos: torch.Tensor
    clips: list[torch.Tensor]
    clip_names: list[str]
    fps: float
    size: int


def load_bank(root: str | Path, split: str = "train") -> Bank:
    from ..io.video import read_video

    root = Path(root)
    manifest_path = root / "bank.json"
    if not manifest_path.exists():
        raise BankError(f"'{root}' is not a bank (no bank.json); build one with `python -m pfp_app bank --out {root}`")
    manifest = json.loads(manifest_path.read_text())
    files = sorted((root / "photos" / split).glob("*.jpg"))
    if not files:
        raise BankError(f"the bank at '{root}' has no {split} photographs")
    photos = torch.from_numpy(np.stack([cv2.imread(str(f), cv2.IMREAD_COLOR)[:, :, ::-1] for f in files])).permute(0, 3, 1, 2)
    clips, names = [], []
    for f in sorted((root / "clips" / split).glob("*.mp4")):
        frames, _ = read_video(f)  # (T, H, W, 3) RGB uint8
        clips.append(torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous())  # (3, T, H, W)
        names.append(f.stem)
    return Bank(photos.contiguous(), clips, names, float(manifest["fps"]), int(manifest["size"]))


_BANK_CACHE: dict[tuple[str, str], Bank] = {}


def cached_bank(root: str | Path, split: str = "train") -> Bank:
    """load_bank, once per process (dataset items are made in worker processes)."""
    key = (str(Path(root).resolve()), split)
    if key not in _BANK_CACHE:
        _BANK_CACHE[key] = load_bank(root, split)
    return _BANK_CACHE[key]


class BankClipDataset(torch.utils.data.Dataset):
    """Long clips from the bank in the world's item format ({'frames': (3, T, H, W) in [-1, 1], 'storyboard':
    ''}): every `real_every`-th item a window of a real clip (ping-pong where the clip is shorter), the others
    photo motion with returns. Uncaptioned: for stage-1 retrieval and codec training, not for stage 2."""

    def __init__(self, root: str | Path, num_clips: int, seconds: float = 20.0, size: int = 128, fps: float = 8.0,
                 seed: int = 0, split: str = "train", real_every: int = 4):
        self.root, self.num_clips, self.seconds, self.size, self.fps = str(root), num_clips, seconds, size, fps
        self.seed, self.split, self.real_every = seed, split, real_every
        bank = cached_bank(root, split)
        if bank.size != size:
            raise BankError(f"the bank at '{root}' was built at {bank.size}x{bank.size}, the model needs {size}x{size}; "
                            f"rebuild it with `python -m pfp_app bank --size {size}`")

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> dict:
        from .photo_motion import PhotoMotion, ping_pong
        from .world import frames_for_seconds

        bank = cached_bank(self.root, self.split)
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{i}".encode()))
        t = frames_for_seconds(self.seconds, self.fps)
        if bank.clips and i % self.real_every == 0:
            clip = bank.clips[(i // self.real_every) % len(bank.clips)]
            start = int(torch.randint(0, max(1, clip.shape[1] - t + 1), (1,), generator=gen))
            frames = clip[:, ping_pong(clip.shape[1], t, start)].float().div(127.5).sub(1.0)
            if torch.rand(1, generator=gen).item() < 0.5:
                frames = frames.flip(-1)
        else:
            frames = PhotoMotion(bank.photos, self.size, self.fps).clip(self.seconds, gen)
        return {"frames": frames, "storyboard": ""}
