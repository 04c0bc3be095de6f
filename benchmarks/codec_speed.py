"""Before/after of the VAE on the CPU (issue 16): one segment's decode and a 20-s upload's encode, old and new code.

    python benchmarks/codec_speed.py [--model default] [--reps 1]

Old: a segment decoded with 2 latent frames of context re-decoded (`WanLatentCodec.decode_continuation`), through
PyTorch's native conv3d. New: the decoder's cache carried from the previous segment (`StreamingDecoder`) and oneDNN
convolutions (`fast_conv`). Both run in one process, alternating, so that other jobs on a shared CPU slow both alike.
Prints a markdown table of wall seconds (median over --reps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pfp_app.model.causal_decode import StreamingDecoder
from pfp_app.model.fast_conv import use_onednn_conv3d
from pfp_app.model.bundle import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    m = load_model(args.model)
    c, v = m.codec, m.video
    h, w = v.height // c.spatial_ratio, v.width // c.spatial_ratio
    n = v.segment_latent_frames
    ctx, z = torch.randn(1, c.latent_channels, 2, h, w), torch.randn(1, c.latent_channels, n, h, w)
    clip = torch.rand(1, 3, c.pixel_frames(c.latent_frames(20 * v.fps + 1)), v.height, v.width) * 2 - 1
    convs = [mod for mod in c.vae.modules() if isinstance(mod, torch.nn.Conv3d)]

    def native():  # undo fast_conv: every conv3d back on PyTorch's own dispatch
        for mod in convs:
            mod.__dict__.pop("_conv_forward", None)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    rows = {"old decode": [], "new decode": [], "old encode": [], "new encode": []}
    with torch.no_grad():
        for _ in range(args.reps):
            native()
            rows["old decode"].append(timed(lambda: c.decode_continuation(ctx, z)))
            use_onednn_conv3d(c.vae)
            dec = StreamingDecoder(c)
            dec.decode(ctx)  # the previous segment, decoded before
            rows["new decode"].append(timed(lambda: dec.decode(z)))
            native()
            rows["old encode"].append(timed(lambda: c.encode(clip)))
            use_onednn_conv3d(c.vae)
            rows["new encode"].append(timed(lambda: c.encode(clip)))
    med = {k: statistics.median(t) for k, t in rows.items()}
    print(f"model {args.model}, {v.height}x{v.width}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| step | old s | new s | ratio |\n|---|---|---|---|")
    print(f"| decode one {n}-latent segment | {med['old decode']:.2f} | {med['new decode']:.2f} | "
          f"{med['old decode'] / med['new decode']:.1f}x |")
    print(f"| encode a 20-s clip ({clip.shape[2]} frames) | {med['old encode']:.2f} | {med['new encode']:.2f} | "
          f"{med['old encode'] / med['new encode']:.1f}x |")


if __name__ == "__main__":
    main()
