"""Peak memory of exporting a film: 1-minute vs 10-minute films at the default model's size (issue 15 #9).

    python benchmarks/export_memory.py [--minutes 1,10] [--model default]

For each length, a project of that many synthetic segments (moving gradients, 128x128 at 8 fps for the
default model) is written, then exported in a fresh Python process; the table gives that process's peak
RSS after loading the model and its peak RSS during the export (VmHWM, reset after loading), for the streaming export
(`PFPPipeline.export`) and, for comparison, the film held whole as float32 (the export before issue 15).
ffmpeg runs in its own process and is not counted (its memory does not depend on the film's length).
"""

from __future__ import annotations

import argparse
import json
import platform
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Start the peak (VmHWM) afresh at the current RSS, so that model loading's own peak does not hide the
    export's (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_project(folder: Path, pipe, minutes: float):
    """A project with ceil(minutes * 60 / segment seconds) segments of synthetic frames; returns it."""
    from pfp_app.film.project import Project

    v = pipe.model.video
    project = Project(folder)
    n = int(np.ceil(minutes * 60 / pipe.segment_seconds))
    frames_per_segment = round(pipe.segment_seconds * v.fps)
    y, x = np.mgrid[0 : v.height, 0 : v.width]
    for i in range(n):
        t = np.arange(frames_per_segment)[:, None, None] + i * frames_per_segment
        frames = np.stack([(x + 3 * t) % 256, (y + 2 * t) % 256, (x + y + t) % 256], axis=-1).astype(np.uint8)
        project.save_segment(i, torch.zeros(1, 1, 1, 1), frames, v.fps,
                             {"prompt": "synthetic", "seed": 0, "sampler": pipe.model.sampler.to_record()})
    project.write_storyboard(f"0s: synthetic\nend: {minutes * 60:g}s\n")
    project.write_settings({"model": pipe.model.name, "video": {"fps": v.fps}})
    return project


def child(args) -> None:
    """Runs in a fresh process: load the model, export the project one way, print a JSON line."""
    from pfp_app.model.bundle import load_model
    from pfp_app.sampling.pipeline import PFPPipeline
    from pfp_app.film.export import write_film
    from pfp_app.film.project import Project
    from pfp_app.io.video import frames_to_tensor, read_video, write_mp4

    pipe = PFPPipeline(load_model(args.model).to("cpu"), device="cpu")
    project = Project(args.project)
    gc.collect()
    reset_peak()
    loaded = _status_mib("VmRSS")
    t0 = time.perf_counter()
    if args.mode == "streaming":
        write_film(project, Path(args.project) / "out.mp4")
    else:  # what export did before: every segment decoded to float32 and concatenated
        frames = torch.cat([frames_to_tensor(read_video(project.segment_video_path(i))[0])
                            for i in range(project.finished_segments())], dim=1)  # (3, T, H, W)
        write_mp4(Path(args.project) / "out.mp4", frames, pipe.model.video.fps)
    print(json.dumps({"loaded_mib": loaded, "peak_mib": _status_mib("VmHWM"), "seconds": time.perf_counter() - t0}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", default="1,10")
    p.add_argument("--model", default="default")
    p.add_argument("--modes", default="streaming,held-whole")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--project", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from pfp_app.model.bundle import load_model
    from pfp_app.sampling.pipeline import PFPPipeline

    pipe = PFPPipeline(load_model(args.model).to("cpu"), device="cpu")
    v = pipe.model.video
    print(f"model {pipe.model.name}: {v.width}x{v.height} at {v.fps} fps, segments of {pipe.segment_seconds:g} s; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| film | segments | export | RSS after model load (MiB) | peak RSS during export (MiB) | export growth (MiB) "
          "| export s |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            project = make_project(Path(tmp) / f"film_{minutes:g}min", pipe, minutes)
            for mode in args.modes.split(","):
                out = subprocess.run([sys.executable, __file__, "--child", "--project", str(project.folder), "--mode",
                                      mode, "--model", args.model], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {minutes:g} min | {project.finished_segments()} | {mode} | {r['loaded_mib']:.0f} | "
                      f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['loaded_mib']:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
