"""Video made from still photographs: camera pans, zooms and slow rotations, lighting changes, cuts between
photos, and objects (cut-outs of other photos) that leave the frame and come back.

Real footage is scarce offline (a few clips in opencv-doc), photographs are not: this turns the bank's crops
into motion for the codec's temporal path and into long clips with returns for stage-1 retrieval. Pure torch
(`affine_grid` + `grid_sample`), batched, on any device: on the GPU it makes windows faster than the codec
trains on them, so codec training never waits for a data loader.

Shapes: photos (N, 3, S, S) uint8; output (B, 3, T, H, W) float in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .world import frames_for_seconds


def _u(shape, gen, lo, hi, device):
    return (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(device)


def camera_thetas(b: int, t: int, gen: torch.Generator, device, still: float = 0.15) -> torch.Tensor:
    """Per-frame affine maps (B, T, 2, 3) of a camera moving over a photo, output -> photo coordinates
    (normalised to [-1, 1]): zoom between 0.45 and 0.95 of the photo, pans, rotation up to ±0.35 rad over
    the shot. A share `still` of the shots keep the camera still."""
    s0, s1 = _u((b,), gen, 0.45, 0.95, "cpu"), _u((b,), gen, 0.45, 0.95, "cpu")
    r0, dr = _u((b,), gen, -0.2, 0.2, "cpu"), _u((b,), gen, -0.35, 0.35, "cpu")
    still_mask = torch.rand(b, generator=gen) < still
    s1 = torch.where(still_mask, s0, s1)
    dr = torch.where(still_mask, torch.zeros_like(dr), dr)
    u = torch.linspace(0, 1, t).view(1, t)
    ease = 0.5 - 0.5 * torch.cos(math.pi * u)  # slow in, slow out
    s = s0[:, None] + (s1 - s0)[:, None] * ease  # (B, T)
    rot = r0[:, None] + dr[:, None] * ease
    s = torch.minimum(s, 1 / (rot.cos().abs() + rot.sin().abs()))  # a rotated crop must fit in the photo
    room = (1 - s * (rot.cos().abs() + rot.sin().abs())).clamp_min(0)  # how far the crop may move and stay inside
    p0, p1 = _u((b, 2), gen, -1, 1, "cpu"), _u((b, 2), gen, -1, 1, "cpu")
    p1 = torch.where(still_mask[:, None], p0, p1)
    pos = (p0[:, None] + (p1 - p0)[:, None] * ease[..., None]) * room[..., None]  # (B, T, 2)
    cos, sin = rot.cos() * s, rot.sin() * s
    theta = torch.stack([torch.stack([cos, -sin, pos[..., 0]], -1), torch.stack([sin, cos, pos[..., 1]], -1)], -2)
    return theta.to(device)


def lighting(b: int, t: int, gen: torch.Generator, device, share: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain (B, 1, T, 1, 1) per channel ramps and an offset: a share of the shots change light over time."""
    on = (torch.rand(b, generator=gen) < share).float()[:, None, None]
    g0, g1 = _u((b, 3, 1), gen, 0.75, 1.25, "cpu"), _u((b, 3, 1), gen, 0.75, 1.25, "cpu")
    u = torch.linspace(0, 1, t).view(1, 1, t)
    gain = 1 + on * (g0 - 1 + (g1 - g0) * u)  # (B, 3, T)
    offset = on * _u((b, 1, 1), gen, -0.15, 0.15, "cpu") * u
    return gain[..., None, None].to(device), offset[..., None, None].to(device)


def _sample(photos: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """photos (B, 3, S, S) float, theta (B, T, 2, 3) -> (B, 3, T, size, size)."""
    b, t = theta.shape[:2]
    grid = F.affine_grid(theta.reshape(b * t, 2, 3), (b * t, 3, size, size), align_corners=False)
    src = photos[:, None].expand(b, t, *photos.shape[1:]).reshape(b * t, *photos.shape[1:])
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.view(b, t, 3, size, size).transpose(1, 2)


def _object_path(b: int, t: int, gen: torch.Generator, device, returns: bool) -> torch.Tensor:
    """Object centres (B, T, 2) in [-1.6, 1.6]: crosses the frame and leaves; with `returns`, comes back."""
    start, end = _u((b, 2), gen, -1.0, 1.0, "cpu"), _u((b, 2), gen, -1.0, 1.0, "cpu")
    side = torch.randint(0, 2, (b,), generator=gen).float() * 2 - 1
    end[:, 0] = side * 1.6  # leaves through the left or right edge
    u = torch.linspace(0, 1, t).view(1, t, 1)
    if returns:  # out and back: the second half retraces the first
        u = 1 - (2 * u - 1).abs()
        u = u * 1.4  # stays out of frame for a while around the middle
    return (start[:, None] + (end - start)[:, None] * u.clamp(max=1.0)).to(device)


def paste_objects(frames: torch.Tensor, cutouts: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """frames (B, 3, T, H, W); cutouts (B, 3, S, S) float; centres (B, T, 2) normalised; radius (B,) in
    normalised units -> frames with each cut-out (a soft ellipse of another photo) at its centre."""
    b, _, t, h, w = frames.shape
    scale = radius.view(b, 1, 1)
    theta = torch.zeros(b, t, 2, 3, device=frames.device)
    theta[..., 0, 0] = 1 / scale[..., 0]
    theta[..., 1, 1] = 1 / scale[..., 0]
    theta[..., :, 2] = -centres / scale
    obj = _sample(cutouts, theta, h)  # (B, 3, T, H, W) the cut-out in a [-1, 1] box around its centre
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=frames.device), torch.linspace(-1, 1, w, device=frames.device),
                            indexing="ij")
    d = ((xs[None, None] - centres[..., 0, None, None]) ** 2 + (ys[None, None] - centres[..., 1, None, None]) ** 2).sqrt()
    mask = ((1 - d / radius.view(b, 1, 1, 1)) * 6).clamp(0, 1)[:, None]  # (B, 1, T, H, W) soft edge
    return frames * (1 - mask) + obj * mask


class PhotoMotion:
    """Motion over a bank of photo crops, on `device`.

    `windows(batch, t)`: short windows for the codec (one shot each; a quarter with a cut, a third with an
    object passing). `clip(seconds)`: a long clip for retrieval training, 3-6 shots whose photos come back
    (a later shot returns to an earlier photo with a new camera move) and an object that leaves and returns.
    """

    def __init__(self, photos_u8: torch.Tensor, size: int = 128, fps: float = 8.0, device="cpu"):
        self.photos = photos_u8.to(device)
        self.size, self.fps, self.device = size, fps, torch.device(device)

    def _photos(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = self.photos[idx.to(self.photos.device)].float().div(127.5).sub(1.0)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)

    def shot(self, photo_idx: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
        b = len(photo_idx)
        frames = _sample(self._photos(photo_idx, gen), camera_thetas(b, t, gen, self.device), self.size)
        gain, offset = lighting(b, t, gen, self.device)
        return (frames * gain + offset).clamp(-1, 1)

    @torch.no_grad()
    def windows(self, batch: int, t: int, gen: torch.Generator) -> torch.Tensor:
        n = len(self.photos)
        frames = self.shot(torch.randint(0, n, (batch,), generator=gen), t, gen)  # (B, 3, T, H, W)
        if t > 1:
            cut = torch.rand(batch, generator=gen) < 0.25
            if cut.any():
                other = self.shot(torch.randint(0, n, (batch,), generator=gen), t, gen)
                at = torch.randint(1, t, (batch,), generator=gen)
                after = (torch.arange(t).view(1, t) >= at.view(-1, 1)) & cut.view(-1, 1)  # (B, T)
                frames = torch.where(after.to(self.device).view(batch, 1, t, 1, 1), other, frames)
            obj = torch.rand(batch, generator=gen) < 0.33
            if obj.any():
                k = int(obj.sum())
                cut_outs = self._photos(torch.randint(0, n, (k,), generator=gen), gen)
                centres = _object_path(k, t, gen, self.device, returns=False)
                radius = _u((k,), gen, 0.2, 0.5, self.device)
                frames[obj.to(self.device)] = paste_objects(frames[obj.to(self.device)], cut_outs, centres, radius)
        return frames

    @torch.no_grad()
    def clip(self, seconds: float, gen: torch.Generator) -> torch.Tensor:
        """One long clip (3, T, H, W) in [-1, 1], T = frames_for_seconds(seconds, fps)."""
        t_total = frames_for_seconds(seconds, self.fps)
        n_shots = int(torch.randint(3, 7, (1,), generator=gen))
        cuts = sorted(torch.randperm(t_total - 8, generator=gen)[: n_shots - 1].add(4).tolist())
        bounds = [0] + cuts + [t_total]
        used: list[int] = []
        parts = []
        for k in range(n_shots):
            if used and torch.rand(1, generator=gen).item() < 0.4:  # back to an earlier photo
                p = used[int(torch.randint(0, len(used), (1,), generator=gen))]
            else:
                p = int(torch.randint(0, len(self.photos), (1,), generator=gen))
            used.append(p)
            parts.append(self.shot(torch.tensor([p]), bounds[k + 1] - bounds[k], gen)[0])
        frames = torch.cat(parts, dim=1)  # (3, T, H, W)
        if torch.rand(1, generator=gen).item() < 0.6:  # an object that leaves and comes back
            cut_out = self._photos(torch.randint(0, len(self.photos), (1,), generator=gen), gen)
            centres = _object_path(1, t_total, gen, self.device, returns=True)
            frames = paste_objects(frames[None], cut_out, centres, _u((1,), gen, 0.2, 0.45, self.device))[0]
        return frames


def real_windows(clips: list[torch.Tensor], batch: int, t: int, gen: torch.Generator, device) -> torch.Tensor:
    """Random `t`-frame windows (B, 3, t, H, W) in [-1, 1] of real clips (each (3, T, H, W) uint8), flipped
    left-right at random; a clip shorter than the window plays forward and back (ping-pong)."""
    out = []
    for _ in range(batch):
        c = clips[int(torch.randint(0, len(clips), (1,), generator=gen))]
        idx = ping_pong(c.shape[1], t, int(torch.randint(0, max(1, c.shape[1] - t + 1), (1,), generator=gen)))
        w = c[:, idx]
        out.append(w.flip(-1) if torch.rand(1, generator=gen).item() < 0.5 else w)
    return torch.stack(out).to(device).float().div(127.5).sub(1.0)


def ping_pong(n: int, t: int, start: int = 0) -> torch.Tensor:
    """Frame indices of a `t`-frame window from `start` in an `n`-frame clip, bouncing at its ends."""
    if n == 1:
        return torch.zeros(t, dtype=torch.long)
    k = (torch.arange(t) + start) % (2 * (n - 1))
    return torch.where(k < n, k, 2 * (n - 1) - k)
