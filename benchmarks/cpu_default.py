"""The embedded default model on the CPU: time a whole storyboard, each segment, the memory inspector's recalls
and an upload's preparation (issues 3 and 16 targets).

    python benchmarks/cpu_default.py [--storyboard presets/storyboards/returning_circle.txt] [--model default]

Targets (2-core CPU): a 20-s storyboard in at most 3 minutes; any recall in the studio, the first included, in at
most 5 s after generation; an upload's preparation in at most 10 s per 20 s of clip; decoding under a quarter of a
segment's time. The recalls go through the studio's own callback (`Studio.inspect`, the first one with nothing
cached), the upload through the studio's preparation (`prepare_clip` + `encode_clip`) of a 20-s 640x360 24-fps
clip made from the generated film. Prints markdown tables; timings are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pfp_app.model.causal_decode import StreamingDecoder
from pfp_app.model.bundle import load_model
from pfp_app.film.session import GenerationSession, SegmentDone
from pfp_app.sampling.pipeline import PFPPipeline
from pfp_app.film.export import write_film
from pfp_app.film.project import Project
from pfp_app.film.recall_clip import encode_clip, prepare_clip
from pfp_app.film.storyboard import Shot, Storyboard, format_storyboard, parse_storyboard
from pfp_app.io.video import read_video, write_mp4


def step_times() -> None:
    """Median seconds of one denoising step (a segment after 4 segments of history) per config, random weights."""
    from pfp_app.model.bundle import build_random_model

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

    decode_cpu: list[float] = []
    streaming_decode = StreamingDecoder.decode

    def timed_decode(self, latents):
        c0 = time.process_time()
        out = streaming_decode(self, latents)
        decode_cpu.append(time.process_time() - c0)
        return out

    StreamingDecoder.decode = timed_decode
    t0 = time.perf_counter()
    model = load_model(args.model)
    pipe = PFPPipeline(model)
    _ = model.text_encoder
    t_load = time.perf_counter() - t0
    full = parse_storyboard(Path(args.storyboard).read_text())
    sb = Storyboard(tuple(Shot(x.start, min(x.end, args.seconds), x.prompt) for x in full.shots if x.start < args.seconds),
                    args.seconds)  # cut to --seconds
    with tempfile.TemporaryDirectory() as tmp:
        from pfp_app.app.studio.callbacks import Studio

        studio = Studio(Path(tmp) / "projects", model_spec=args.model)
        studio.pipe = pipe
        project = Project(Path(tmp) / "projects" / "bench")
        t0 = time.perf_counter()
        first = []
        seg_cpu = []  # process CPU seconds per segment (robust to other jobs on a shared CPU), and its decoding part
        cpu_mark = [time.process_time()]

        results = []  # SegmentDone events

        def on_event(r):
            if not isinstance(r, SegmentDone):
                return
            results.append(r)
            first.append(time.perf_counter() - t0)
            seg_cpu.append((time.process_time() - cpu_mark[0], decode_cpu[-1] if decode_cpu else 0.0))
            cpu_mark[0] = time.process_time()
            print(f"segment {r.segment}: {r.sampling_seconds:.1f} s sampling, {r.decoding_seconds:.1f} s decoding "
                  f"(wall); {seg_cpu[-1][0]:.1f} CPU s", file=sys.stderr, flush=True)

        session = GenerationSession(pipe, project)
        session.run(session.plan(format_storyboard(sb), 0), on_event)
        t_gen = time.perf_counter() - t0
        n_frames = sum(len(read_video(project.segment_video_path(i))[0]) for i in range(project.finished_segments()))
        fps = model.video.fps
        # the inspector, as the studio runs it: the first recall finds nothing cached
        recall_times, recall_cpu, psnrs = [], [], []
        for k in range(args.recalls):
            at = round((k + 0.5) / args.recalls * (n_frames - 1)) / fps
            t0, c0 = time.perf_counter(), time.process_time()
            md = studio.inspector.inspect("bench", at, args.recall_steps or model.sampler.steps, k)[3]
            recall_times.append(time.perf_counter() - t0)
            recall_cpu.append(time.process_time() - c0)
            psnrs.append(float(md.split("| PSNR | ")[1].split(" dB")[0]))
        # an upload: the film, repeated to 20 s, as a 640x360 24-fps clip
        film, _ = read_video(write_film(project, Path(tmp) / "film.mp4"), size=(360, 640))
        idx = (torch.arange(20 * 24) * fps // 24) % len(film)
        clip_path = write_mp4(Path(tmp) / "upload.mp4", film[idx.numpy()], 24, crf=18)
        t0, c0 = time.perf_counter(), time.process_time()
        clip = prepare_clip(pipe, clip_path, 20.0, 20.0)
        t_read = time.perf_counter() - t0
        encode_clip(pipe, clip)
        t_upload, c_upload = time.perf_counter() - t0, time.process_time() - c0
    sampling = [r.sampling_seconds for r in results]
    decoding = [r.decoding_seconds for r in results]
    share = sum(decoding) / sum(r.seconds for r in results)
    cpu_share = sum(d for _, d in seg_cpu) / sum(c for c, _ in seg_cpu)
    rows = [
        ("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end"),
        ("model", f"{model.label}; {model.video.height}x{model.video.width} @ {fps} fps, {model.sampler.steps} steps"),
        ("storyboard", f"{args.storyboard}: {len(sb.shots)} shots, {sb.duration:g} s -> {len(results)} segments, "
                       f"{n_frames} frames ({n_frames / fps:g} s)"),
        ("load (model + text encoder)", f"{t_load:.1f} s"),
        ("first segment ready", f"{first[0]:.1f} s"),
        ("whole storyboard (generate + decode + save)", f"{t_gen:.1f} s (target <= 180 s)"),
        ("per segment: sampling (φ, text, denoising)", f"{sum(sampling) / len(sampling):.2f} s mean"),
        ("per segment: decoding", f"{sum(decoding) / len(decoding):.2f} s mean = {share:.0%} of a segment's wall "
                                  f"time, {cpu_share:.0%} of its CPU time (target < 25 %)"),
        ("per segment: CPU seconds of this process", f"{sum(c for c, _ in seg_cpu) / len(seg_cpu):.1f} s mean, "
                                                     f"{sum(d for _, d in seg_cpu) / len(seg_cpu):.1f} s of it decoding"),
        ("first recall in the studio (nothing cached)", f"{recall_times[0]:.2f} s wall, {recall_cpu[0]:.1f} CPU s "
                                                        "(target <= 5 s)"),
        ("later recalls", f"{', '.join(f'{t:.2f}' for t in recall_times[1:])} s wall; PSNR vs the film "
                          f"{sum(psnrs) / len(psnrs):.1f} dB mean"),
        ("upload preparation, 20-s 640x360 24-fps clip", f"{t_upload:.2f} s wall ({t_read:.2f} s reading, "
                                                          f"{t_upload - t_read:.2f} s compressing), {c_upload:.1f} CPU s "
                                                          "(target <= 10 s)"),
    ]
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print("\n| segment | shot | latent frames | film frames | sampling s | decoding s |\n|---|---|---|---|---|---|")
    segments = pipe.schedule(sb)
    for r in results:
        g = segments[r.segment]
        print(f"| {g.index} | {g.shot_index + 1} | {g.num_latents} | {g.num_frames} | {r.sampling_seconds:.2f} | "
              f"{r.decoding_seconds:.2f} |")


if __name__ == "__main__":
    main()
