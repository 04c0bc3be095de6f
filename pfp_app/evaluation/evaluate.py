"""Held-out recall scores: can φ(history) alone bring back past frames, and does the memory matter?

For each held-out clip, latent frames spread over the whole history are retrieved from pure noise
given only the memory tokens (no caption), decoded, and compared with the true pixel frames.
Reported beside three references: the same model with φ's output zeroed (what G guesses without
memory), the history's mean frame (a memory that only learned the average scores this), and the
codec's own reconstruction (the ceiling: recall cannot beat the codec).
"""

from __future__ import annotations

import torch

from ..model.memory_dit import MemoryTokens
from ..data.world import WorldClipDataset
from ..sampling.flow import sample
from .metrics import lpips_or_none, mean_and_ci95, psnr, ssim
from ..model.bundle import PFPModel


def query_latents(num_latents: int, queries: int) -> list[int]:
    """Latent frames 1..T'-1 spread evenly over the history (each recalled with its predecessor)."""
    js = torch.linspace(1, num_latents - 1, queries).round().long().unique().tolist()
    return [int(j) for j in js]


@torch.no_grad()
def recall_clip_batch(model: PFPModel, frames: torch.Tensor, queries: int, steps: int, seed: int, device,
                      zero_memory: bool = False, memory_guidance: float = 0.0) -> dict[str, list[float]]:
    """frames (B, 3, T, H, W) in [-1, 1] -> per-query PSNR/SSIM lists for recall and references, and LPIPS
    lists too where its package and weights are installed (they are never downloaded). memory_guidance: G's
    answer with the memory pushed away from its answer without it (flow.SamplerSettings), as the studio's
    inspector recalls with the model's memory guidance; 0: the memory alone, unguided."""
    codec, r = model.codec, model.codec.temporal_ratio
    latents = codec.encode(frames.to(device))  # (B, C, T', H', W')
    b, t_lat = latents.shape[0], latents.shape[2]
    js = query_latents(t_lat, queries)
    omega = sorted({k for j in js for k in (j - 1, j)})
    memory = model.memory_encoder(latents)
    if zero_memory:
        memory = MemoryTokens(memory.tokens * 0, memory.coords)
    settings = model.sampler.for_recall(steps, memory_guidance)
    text = model.null_text(b).to(device)
    shape = (b, latents.shape[1], len(omega), *latents.shape[3:])
    retrieved = sample(model.velocity, shape, text, memory, torch.tensor(omega, dtype=torch.float32, device=device),
                       settings, torch.Generator().manual_seed(seed), device=device)
    pos = {k: i for i, k in enumerate(omega)}
    pairs_rec = torch.cat([retrieved[:, :, [pos[j - 1], pos[j]]] for j in js])  # (Q*B, C, 2, H', W')
    pairs_true = torch.cat([latents[:, :, [j - 1, j]] for j in js])
    rec = codec.decode(pairs_rec)[:, :, -1]  # (Q*B, 3, H, W): the last pixel frame of latent j
    ceil = codec.decode(pairs_true)[:, :, -1]
    truth = torch.cat([frames[:, :, r * j] for j in js]).to(rec)
    mean_frame = frames.mean(dim=2).repeat(len(js), 1, 1, 1).to(rec)
    metrics = {"psnr": psnr, "ssim": ssim}
    if lpips_or_none(rec[:1], truth[:1]) is not None:
        metrics["lpips"] = lpips_or_none
    out: dict[str, list[float]] = {}
    for prefix, pred in (("", rec), ("mean_", mean_frame), ("codec_", ceil)):
        for name, fn in metrics.items():
            out[prefix + name] = [fn(pred[i], truth[i]) for i in range(truth.shape[0])]
    return out


def evaluate_recall(model: PFPModel, num_clips: int = 16, seconds: float = 20.0, seed: int = 10_000,
                    steps: int | None = None, queries: int = 6, device="cpu", batch: int = 4,
                    memory_guidance: float = 0.0) -> dict:
    """Mean and 95% interval of recall PSNR/SSIM on held-out world clips, with the three references.

    The interval is over per-clip means (frames of one clip are not independent samples)."""
    v = model.video
    ds = WorldClipDataset(num_clips, seconds=seconds, size=v.height, fps=v.fps, seed=seed)
    steps = steps or model.sampler.steps
    acc: dict[str, list[float]] = {}
    for start in range(0, num_clips, batch):
        frames = torch.stack([ds[i]["frames"] for i in range(start, min(start + batch, num_clips))])
        for zero in (False, True):
            res = recall_clip_batch(model, frames, queries, steps, seed + start, device, zero_memory=zero,
                                    memory_guidance=memory_guidance)
            keys = [k for k in res if not k.startswith(("mean_", "codec_"))] if zero else res.keys()
            n_clips = frames.shape[0]
            for k in keys:  # res[k] is query-major: index q * n_clips + clip
                per_clip = [sum(res[k][q * n_clips + c] for q in range(len(res[k]) // n_clips)) / (len(res[k]) // n_clips)
                            for c in range(n_clips)]
                acc.setdefault(("zeroed_" if zero else "") + k, []).extend(per_clip)
    scores = {k: dict(zip(("mean", "ci95"), mean_and_ci95(vals))) | {"n_clips": len(vals)} for k, vals in acc.items()}
    scores["settings"] = {"num_clips": num_clips, "seconds": seconds, "seed": seed, "steps": steps, "queries": queries,
                          "memory_guidance": memory_guidance,
                          "rate": model.memory_encoder.config.rate, "variant": model.memory_encoder.config.variant}
    return scores


def format_scores(s: dict) -> str:
    lp = "lpips" in s  # only where LPIPS is installed

    def row(name: str, prefix: str) -> str:
        cell = lambda k, d: f"{s[prefix + k]['mean']:.{d}f} ± {s[prefix + k]['ci95']:.{d}f}"  # noqa: E731
        return f"| {name} | {cell('psnr', 2)} | {cell('ssim', 3)} |" + (f" {cell('lpips', 3)} |" if lp else "")

    return "\n".join([
        f"recall on {s['settings']['num_clips']} held-out clips x {s['settings']['queries']} frames "
        f"(rate {s['settings']['rate']}, {s['settings']['variant']}, {s['settings']['steps']} steps"
        f"{', memory guidance %g' % s['settings']['memory_guidance'] if s['settings'].get('memory_guidance') else ''})",
        "| | PSNR (dB) | SSIM |" + (" LPIPS |" if lp else ""), "|---|---|---|" + ("---|" if lp else ""),
        row("recall from memory", ""),
        row("φ output zeroed", "zeroed_"),
        row("history mean frame", "mean_"),
        row("codec reconstruction (ceiling)", "codec_"),
    ])


def trim_to_codec(frames: torch.Tensor, temporal_ratio: int) -> torch.Tensor:
    """(3, T, H, W) -> its last 1 + r k frames, the lengths the codec takes."""
    t = frames.shape[1]
    return frames[:, t - (1 + temporal_ratio * ((t - 1) // temporal_ratio)):]


@torch.no_grad()
def codec_clip_scores(model: PFPModel, frames: torch.Tensor, device) -> dict[str, float]:
    """Video mode, as the app uses it: a whole clip (3, T, H, W) in [-1, 1] encoded and decoded at once.
    Mean PSNR/SSIM over its frames, and the same for the clip's own mean frame (what a blur of the clip
    scores: a codec must beat it by far)."""
    codec = model.codec
    x = trim_to_codec(frames, codec.temporal_ratio)[None].to(device)  # (1, 3, T, H, W)
    rec = codec.decode(codec.encode(x))
    mean = x.mean(dim=2, keepdim=True).expand_as(x)
    out = {}
    for prefix, pred in (("codec_", rec), ("mean_", mean)):
        out[prefix + "psnr"] = sum(psnr(pred[0, :, k], x[0, :, k]) for k in range(x.shape[2])) / x.shape[2]
        out[prefix + "ssim"] = sum(ssim(pred[0, :, k], x[0, :, k]) for k in range(x.shape[2])) / x.shape[2]
    return out


def video_codec_scores(model: PFPModel, clips: dict[str, torch.Tensor], device) -> dict[str, dict]:
    """Mean ± 95% interval over clips of `codec_clip_scores` (video mode, every frame, and the clip's mean frame),
    keys prefixed 'video_' as in `evaluate_clips`."""
    rows = [codec_clip_scores(model, frames, device) for frames in clips.values()]
    return {"video_" + k: dict(zip(("mean", "ci95"), mean_and_ci95([r[k] for r in rows]))) for k in rows[0]}


def heldout_real_clips(bank_root: str, size: int, fps: float) -> dict[str, torch.Tensor]:
    """The bank's held-out real clips, (3, T, H, W) in [-1, 1] each, by name."""
    from ..data.bank import load_bank

    bank = load_bank(bank_root, "heldout")
    if bank.size != size or abs(bank.fps - fps) > 1e-6:
        raise ValueError(f"the bank's clips are {bank.size}x{bank.size} at {bank.fps:g} fps, the model makes "
                         f"{size}x{size} at {fps:g} fps; rebuild it with `python -m pfp_app bank --size {size} --fps {fps:g}`")
    if not bank.clips:
        raise ValueError(f"the bank {bank_root} has no held-out real clips (it was built without opencv-doc's "
                         "examples): `apt-get install opencv-doc`, then `python -m pfp_app bank --out DIR` again")
    return {name: c.float().div(127.5).sub(1.0) for name, c in zip(bank.clip_names, bank.clips)}


def heldout_photo_clips(bank_root: str, num: int, seconds: float, size: int, fps: float, seed: int) -> dict[str, torch.Tensor]:
    """Photo-motion clips (with cuts and returns) made from the bank's held-out photographs."""
    from ..data.bank import load_bank
    from ..data.photo_motion import PhotoMotion

    bank = load_bank(bank_root, "heldout")
    motion = PhotoMotion(bank.photos, size, fps)
    return {f"photos-{i}": motion.clip(seconds, torch.Generator().manual_seed(seed + i)) for i in range(num)}


@torch.no_grad()
def evaluate_clips(model: PFPModel, clips: dict[str, torch.Tensor], steps: int | None = None, queries: int = 6,
                   seed: int = 10_000, device="cpu", memory_guidance: float = 0.0) -> dict:
    """Per clip: recall from memory, φ zeroed, the history mean and the codec on the recalled frames (mean ±
    95% interval over the clip's recalled frames), and the codec over every frame of the clip in video mode
    beside the clip's mean frame. Also the mean over clips with its interval."""
    if not clips:
        raise ValueError("no clips to evaluate")
    steps = steps or model.sampler.steps
    per_clip: dict[str, dict] = {}
    for k, (name, frames) in enumerate(clips.items()):
        x = trim_to_codec(frames, model.codec.temporal_ratio)[None]
        row: dict[str, dict] = {}
        for zero in (False, True):
            res = recall_clip_batch(model, x, queries, steps, seed + k, device, zero_memory=zero,
                                    memory_guidance=memory_guidance)
            for key, vals in res.items():
                if zero and key.startswith(("mean_", "codec_")):
                    continue
                row[("zeroed_" if zero else "") + key] = dict(zip(("mean", "ci95"), mean_and_ci95(vals)))
        for key, val in codec_clip_scores(model, frames, device).items():
            row["video_" + key] = {"mean": val, "ci95": 0.0}
        row["frames"] = {"mean": float(x.shape[2]), "ci95": 0.0}
        per_clip[name] = row
    keys = [k for k in next(iter(per_clip.values())) if k != "frames"]
    overall = {k: dict(zip(("mean", "ci95"), mean_and_ci95([r[k]["mean"] for r in per_clip.values()]))) for k in keys}
    return {"clips": per_clip, "overall": overall,
            "settings": {"steps": steps, "queries": queries, "seed": seed, "rate": model.memory_encoder.config.rate}}


def format_clip_scores(s: dict, title: str) -> str:
    cols = (("recall", "psnr"), ("φ zeroed", "zeroed_psnr"), ("history mean", "mean_psnr"),
            ("codec (recalled frames)", "codec_psnr"), ("codec, video mode (all frames)", "video_codec_psnr"),
            ("clip's mean frame", "video_mean_psnr"))
    lines = [title, "| clip | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in list(s["clips"].items()) + [("**mean over clips**", s["overall"])]:
        lines.append(f"| {name} | " + " | ".join(f"{row[k]['mean']:.2f} ± {row[k]['ci95']:.2f}" for _, k in cols) + " |")
    return "\n".join(lines)
