"""Where the codec loses on held-out world clips: video mode (the app's path) against image mode (each frame alone).

    python benchmarks/codec_modes.py [--model assets/pfp-default] [--clips 4] [--seconds 20] [--seed 10000] [--device cuda]

Video mode encodes and decodes a whole clip at once, as the app does (`evaluate`'s "codec, video mode"); image
mode encodes and decodes each frame on its own, so only the spatial path works. Their gap is what the codec's
time path costs: the part of the distance to a target that more video-mode training (or a lower time rate) can
win back, while image mode bounds what the spatial path gives. Prints a markdown table of PSNR per clip.
"""

from __future__ import annotations

import argparse

import torch

from pfp_app.data.world import WorldClipDataset
from pfp_app.model.fast_conv import use_onednn_conv3d
from pfp_app.evaluation.metrics import mean_and_ci95, psnr
from pfp_app.model.bundle import load_model
from pfp_app.evaluation.evaluate import codec_clip_scores, trim_to_codec


@torch.no_grad()
def clip_modes(model, frames: torch.Tensor, chunk: int = 16) -> tuple[float, float]:
    """frames (3, T, H, W) in [-1, 1] -> mean PSNR over frames in (video mode, image mode). Video mode is
    `evaluate`'s own score; image mode encodes the frames as a batch of one-frame clips, `chunk` at a time."""
    video = codec_clip_scores(model, frames, model.codec.device)["codec_psnr"]
    x = trim_to_codec(frames, model.codec.temporal_ratio).transpose(0, 1)[:, :, None]  # (T, 3, 1, H, W)
    image = torch.cat([model.codec.decode(model.codec.encode(x[k:k + chunk])).cpu() for k in range(0, len(x), chunk)])
    return video, sum(psnr(image[k, :, 0], x[k, :, 0]) for k in range(len(x))) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="assets/pfp-default")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=10_000, help="world data seed (held out: training used < 10000)")
    ap.add_argument("--device", default="cpu", help="cpu (oneDNN conv3d, as the app) or cuda")
    args = ap.parse_args()
    model = load_model(args.model, torch_dtype=torch.float32)
    if args.device == "cpu":
        use_onednn_conv3d(model.codec.vae)  # as the app's pipeline does: PyTorch's native CPU conv3d is ~4x slower
    else:  # fp32 on a GPU: the same numbers as the CPU's up to rounding, for a check inside a training call
        model.codec.vae.to(args.device)
    v = model.video
    ds = WorldClipDataset(args.clips, seconds=args.seconds, size=v.height, fps=v.fps, seed=args.seed)
    rows = [clip_modes(model, ds[i]["frames"]) for i in range(args.clips)]
    print(f"### Codec on {args.clips} held-out world clips of {args.seconds:g} s (seed {args.seed}+), `{args.model}`\n")
    print("| clip | video mode (dB) | image mode (dB) | time path costs (dB) |\n|---|---|---|---|")
    for i, (vid, img) in enumerate(rows):
        print(f"| {i} | {vid:.2f} | {img:.2f} | {img - vid:.2f} |")
    (vm, vc), (im, ic) = mean_and_ci95([r[0] for r in rows]), mean_and_ci95([r[1] for r in rows])
    gm, gc = mean_and_ci95([r[1] - r[0] for r in rows])
    print(f"| **mean ± 95%** | {vm:.2f} ± {vc:.2f} | {im:.2f} ± {ic:.2f} | {gm:.2f} ± {gc:.2f} |")


if __name__ == "__main__":
    main()
