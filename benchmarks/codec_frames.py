"""Where in a clip the codec loses: video-mode PSNR frame by frame on held-out world clips, chunks that hold a
cut against the others, the encoder's posterior spread, and (with --widen N) what widening the decoder changes.

    python benchmarks/codec_frames.py [--model assets/pfp-default] [--clips 4] [--seconds 20] [--widen 48]

Prints, per clip: the mean frame PSNR, the mean over latent chunks (4 frames) that hold a cut and over the others,
and the frame PSNRs rounded. A cut is a frame whose mean squared change from the one before exceeds 0.1 (in
[-1, 1] units; within a shot the change is < 0.05). With --widen N, the first clip's first 17 frames are decoded by
the model's decoder and by the same decoder widened to base N (`pfp_app/codec_widen.py`): the PSNR between the
two, and the decode times on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from pfp_app.model.codec_widen import widen_decoder
from pfp_app.data.world import WorldClipDataset
from pfp_app.model.fast_conv import use_onednn_conv3d
from pfp_app.model.bundle import load_model
from pfp_app.evaluation.evaluate import trim_to_codec

CUT_CHANGE = 0.1


def frame_psnrs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) pairs in [-1, 1] -> (T,) PSNR per frame."""
    return 10 * torch.log10(4 / (a.clamp(-1, 1) - b).pow(2).mean(dim=(0, 1, 3, 4)))


def cut_chunk_mask(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """(1, 3, T, H, W) -> (T,) True on the frames of every latent chunk (frames 1 + r j .. r (j + 1)) holding a cut."""
    change = (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean(dim=(0, 1, 3, 4))
    mask = torch.zeros(x.shape[2], dtype=torch.bool)
    for cut in (change > CUT_CHANGE).nonzero().flatten().add(1).tolist():
        start = 1 + ratio * ((cut - 1) // ratio)
        mask[start:start + ratio] = True
    return mask


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/pfp-default")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=10_000, help="world data seed (held out: training used < 10000)")
    ap.add_argument("--widen", type=int, default=0, help="also compare the decoder widened to this base width")
    args = ap.parse_args()
    model = load_model(args.model, torch_dtype=torch.float32)
    codec, vae = model.codec, model.codec.vae
    use_onednn_conv3d(vae)  # as the app's pipeline does: PyTorch's native CPU conv3d is ~4x slower
    v = model.video
    ds = WorldClipDataset(args.clips, seconds=args.seconds, size=v.height, fps=v.fps, seed=args.seed)
    print(f"### Codec frame by frame, {args.clips} held-out world clips of {args.seconds:g} s, `{args.model}`\n")
    print("| clip | frames | cuts | mean (dB) | cut chunks | other chunks | posterior std (mean, max) |\n|---|---|---|---|---|---|---|")
    rounded = []
    for i in range(args.clips):
        x = trim_to_codec(ds[i]["frames"], codec.temporal_ratio)[None]  # (1, 3, T, H, W)
        dist = vae.encode(x).latent_dist
        p = frame_psnrs(vae.decode(dist.mode()).sample, x)
        cut = cut_chunk_mask(x, codec.temporal_ratio)
        cut_mean = f"{p[cut].mean():.2f}" if cut.any() else "–"
        print(f"| {i} | {len(p)} | {int(cut.sum()) // codec.temporal_ratio} | {p.mean():.2f} | {cut_mean} | "
              f"{p[~cut].mean():.2f} | {dist.std.mean():.4f}, {dist.std.max():.3f} |")
        rounded.append(p.round().int().tolist())
    print("\nFrame PSNRs (dB), clip by clip:\n")
    for i, r in enumerate(rounded):
        print(f"- {i}: {r}")
    if args.widen:
        x = trim_to_codec(ds[0]["frames"][:, :17], codec.temporal_ratio)[None]
        wide = widen_decoder(vae, args.widen).eval()
        use_onednn_conv3d(wide)
        z = vae.encode(x).latent_dist.mode()
        t0 = time.perf_counter()
        a = vae.decode(z).sample
        t1 = time.perf_counter()
        b = wide.decode(z).sample
        t2 = time.perf_counter()
        agree = 10 * torch.log10(4 / (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean())
        print(f"\nWidened to {args.widen}: frames agree with the model's decoder at {agree:.1f} dB; decoding "
              f"{x.shape[2]} frames took {t1 - t0:.2f} s (model) and {t2 - t1:.2f} s (widened) on this machine.")


if __name__ == "__main__":
    main()
