"""Batches for codec training from a data spec ('world', 'bank:DIR', 'world+bank:DIR', a video folder).

Image mode (window 1): single frames, mostly random crops of the bank's photographs at random scale and
angle; video mode (window 1 + 4k): windows of world clips, of photo motion (pans, zooms, rotations, light,
cuts, objects leaving and returning) and of the bank's real clips. Photo motion is made on the training
device in the training process (`PhotoMotion`), so the GPU never waits for a loader; world clips and real
clips are decoded once and kept on the device as uint8.
"""

from __future__ import annotations

import torch

from ..data.photo_motion import PhotoMotion, real_windows
from .data import clip_dataset, load_clips, random_windows, shard_indices

# default shares of a video-mode batch when all sources are there: (world, photo motion, real clips)
VIDEO_MIX = (0.25, 0.5, 0.25)


def parse_codec_mix(text: str) -> tuple[float, float, float]:
    """'0.4,0.35,0.25' -> shares of (world/folder clips, photo motion, real clips) in a video-mode batch."""
    try:
        shares = tuple(float(v) for v in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"--codec-mix takes three shares (world, photo motion, real clips), such as 0.4,0.35,0.25; "
                         f"not {text[:40]!r}")
    return shares


class CodecBatches:
    def __init__(self, source: str, num_clips: int, clip_seconds: float, size: int, fps: float, seed: int,
                 rank: int, world_size: int, workers: int, device, mix: tuple[float, float, float] = VIDEO_MIX):
        self.device = torch.device(device)
        parts = [p for p in source.split("+") if p]
        banks = [p[len("bank:"):] for p in parts if p.startswith("bank:")]
        others = "+".join(p for p in parts if not p.startswith("bank:"))
        self.clips_u8 = None  # (N, 3, T, H, W) uint8: world clips or a video folder's windows
        if others:
            ds = clip_dataset(others, num_clips, clip_seconds, size, fps, seed)
            idx = shard_indices(len(ds), rank, world_size)
            if not idx:
                raise ValueError(f"--num-clips {len(ds)} leaves process {rank} of {world_size} without clips")
            self.clips_u8, _ = load_clips(ds, idx, workers)
            self.clips_u8 = self.clips_u8.to(self.device)
        self.motion, self.real = None, []
        if banks:
            from ..data.bank import load_bank

            bank = load_bank(banks[0], "train")
            if bank.size != size:
                raise ValueError(f"the bank was built at {bank.size}x{bank.size}, the model needs {size}x{size}")
            self.motion = PhotoMotion(bank.photos, size, fps, self.device)
            self.real = [c.to(self.device) for c in bank.clips]
        self.size = size
        have = (self.clips_u8 is not None, self.motion is not None, bool(self.real))
        self.shares = [s if h else 0.0 for s, h in zip(mix, have)]  # the mix over the sources this spec has
        if sum(self.shares) <= 0:
            raise ValueError("--codec-mix gives no share to any source this data spec has")

    @property
    def num_clips(self) -> int:
        return (0 if self.clips_u8 is None else len(self.clips_u8)) + (0 if self.motion is None else len(self.motion.photos))

    def _split(self, batch: int, gen: torch.Generator) -> tuple[int, int, int]:
        """How many samples of a batch come from (world/folder clips, photo motion, real clips)."""
        shares = self.shares
        total = sum(shares)
        counts = [int(batch * s / total) for s in shares]
        counts[max(range(3), key=lambda i: shares[i])] += batch - sum(counts)
        return tuple(counts)

    @torch.no_grad()
    def __call__(self, batch: int, window: int, gen: torch.Generator) -> torch.Tensor:
        """(B, 3, window, H, W) in [-1, 1] on the device, shuffled across sources."""
        n_clip, n_motion, n_real = self._split(batch, gen)
        parts = []
        if n_clip:
            parts.append(random_windows(self.clips_u8, window, n_clip, gen).to(self.device))
        if n_motion:
            parts.append(self.motion.windows(n_motion, window, gen))
        if n_real:
            parts.append(real_windows(self.real, n_real, window, gen, self.device))
        x = torch.cat(parts)
        return x[torch.randperm(len(x), generator=gen).to(self.device)]
