"""The embedded default model on the CPU: time a whole storyboard and one recall (issue 3 targets).

    python benchmarks/cpu_default.py [--storyboard presets/storyboards/returning_circle.txt] [--model default]

Targets (2-core CPU): a 20-s, 3-shot storyboard in at most 3 minutes; one past frame recalled in at most 5 s.
Prints a markdown table; run it on an otherwise idle machine (timings are wall-clock).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pfp_app.model import load_model  # noqa: E402
from pfp_app.pipeline import GenerationSettings, PFPPipeline  # noqa: E402
from pfp_app.project import Project  # noqa: E402
from pfp_app.storyboard import parse_storyboard  # noqa: E402


def step_times() -> None:
    """Median seconds of one denoising step (a segment after 4 segments of history) per config, random weights."""
    from pfp_app.model import build_random_model

    print("| config | segment latents | memory tokens | median step (s) |\n|---|---|---|---|")
    for name in ("tiny", "default"):
        m = build_random_model(name)
        v, c = m.video, m.codec
        n, h = v.segment_latent_frames, v.height // c.spatial_ratio
        history = torch.randn(1, c.latent_channels, 4 * n, h, h)
        x = torch.randn(1, c.latent_channels, n, h, h)
        text = m.null_text(1)
        positions = torch.arange(4 * n, 5 * n, dtype=torch.float32)
        times = []
        with torch.no_grad():
            memory = m.memory_encoder(history)
            for i in range(13):
                t0 = time.perf_counter()
                m.velocity(x, torch.tensor([500.0]), text, memory, positions)
                if i >= 3:  # warm-up first
                    times.append(time.perf_counter() - t0)
        print(f"| {name} | {tuple(x.shape)} | {memory.num_tokens} | {sorted(times)[len(times) // 2]:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storyboard", default="presets/storyboards/returning_circle.txt")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seconds", type=float, default=20.0, help="storyboard length to render (cut to this)")
    ap.add_argument("--recalls", type=int, default=3)
    ap.add_argument("--recall-steps", type=int, default=None)
    ap.add_argument("--step-only", action="store_true", help="only time one denoising step of the tiny and default configs")
    args = ap.parse_args()
    if args.step_only:
        step_times()
        return

    t0 = time.perf_counter()
    model = load_model(args.model)
    pipe = PFPPipeline(model)
    _ = model.text_encoder
    t_load = time.perf_counter() - t0
    sb = parse_storyboard(Path(args.storyboard).read_text(), total_seconds=args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(tmp)
        t0 = time.perf_counter()
        first = []
        results = pipe.generate(sb, GenerationSettings(seed=0), project,
                                on_segment=lambda r: first.append(time.perf_counter() - t0) if not first else None)
        t_gen = time.perf_counter() - t0
        history = project.load_history()
        frames = torch.cat([r.frames for r in results], dim=1)
    n_frames = frames.shape[1]
    recall_times, psnrs = [], []
    for k in range(args.recalls):
        idx = int((k + 0.5) / args.recalls * (n_frames - 1))
        t0 = time.perf_counter()
        res = pipe.recall(history, idx, truth_frames=frames, steps=args.recall_steps, seed=k)
        recall_times.append(time.perf_counter() - t0)
        psnrs.append(res.psnr)
    rows = [
        ("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads"),
        ("model", f"{model.label}; {model.video.height}x{model.video.width} @ {model.video.fps} fps, {model.video.steps} steps"),
        ("storyboard", f"{args.storyboard}: {len(sb.shots)} shots, {sb.duration:g} s -> {len(results)} segments, {n_frames} frames"),
        ("load (model + text encoder)", f"{t_load:.1f} s"),
        ("first segment ready", f"{first[0]:.1f} s"),
        ("whole storyboard (generate + decode + save)", f"{t_gen:.1f} s (target <= 180 s)"),
        ("recall one past frame", f"{min(recall_times):.2f} s best, {sum(recall_times) / len(recall_times):.2f} s mean "
                                  f"(target <= 5 s); PSNR vs the generated frame {sum(psnrs) / len(psnrs):.1f} dB"),
    ]
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
