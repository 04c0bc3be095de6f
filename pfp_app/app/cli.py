"""Command line: `python -m pfp_app generate|recall|...` — the same core the UI calls.

Every expected failure (bad storyboard, missing or corrupt file, wrong model folder, time outside the
video, out of GPU memory) ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# what a user can cause: every error of ours is a ValueError (StoryboardError, ModelLoadError, OptionError, ...), and
# the file system's (missing, unreadable, full); anything else is a bug and keeps its traceback
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (the embedded model in assets/), 'tiny-random' (untrained, for tests), "
                        "a PFP model folder, or a Wan 2.1 diffusers folder")
    p.add_argument("--memory", default=None, help="folder with φ weights (memory_encoder/) for a Wan 2.1 folder")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--profile", default="auto",
                   help="runtime profile: auto, resident, lowvram, fp8, offload, offload+fp8, cpu (presets/profiles/)")
    # options are checked by pfp_app.app.options (one layer for the CLI and the studio), not by argparse's type=
    p.add_argument("--steps", default=None, help="denoising steps, 1-1000 (default: the model's)")
    p.add_argument("--seed", default=0, help="0 to 2147483647 (default 0)")


DEFAULT_OUT = "out/film.mp4"  # out/ is git-ignored: a film never lands among the repository's files


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. With argv, the train options (which import torch) are only built for `train`,
    so that `--help` and the other commands start at once."""
    parser = argparse.ArgumentParser(prog="python -m pfp_app", description="PFP Studio: long, consistent video with a memory you can inspect.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="render a storyboard to an MP4 (and a project folder beside it)")
    g.add_argument("--storyboard", default=None,
                   help="storyboard text file: one '12s: prompt' per line (required unless --restore)")
    g.add_argument("--out", default=DEFAULT_OUT, help=f"output .mp4 (default {DEFAULT_OUT}, in the git-ignored out/ folder)")
    g.add_argument("--from", dest="footage", default=None,
                   help="footage to continue: a video, a folder of images or one image; it becomes the history before "
                        "the first shot and storyboard times count from its end")
    g.add_argument("--still-seconds", type=float, default=2.0, help="how long each still image of --from is held (default 2)")
    g.add_argument("--export", choices=("with-footage", "generated-only"), default="with-footage",
                   help="the MP4 starts with the footage (default) or holds the generated part only")
    g.add_argument("--restore", action="store_true",
                   help="--from is an MP4 exported by PFP Studio: regenerate its project (storyboard, seeds, steps, footage) "
                        "from its comment instead of continuing from it")
    g.add_argument("--as-footage", action="store_true",
                   help="--from is an MP4 exported by PFP Studio: continue from its frames anyway")
    g.add_argument("--project", default=None, help="project folder (default: OUT's name + '_project' beside it)")
    g.add_argument("--fps", default=None, help="frame rate of the MP4 (default: the model's; frames are resampled, duration kept)")
    g.add_argument("--crf", default=18, help="H.264 quality, lower is better (0-51)")
    g.add_argument("--sampler", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other sampler setting of pfp_app/sampling/settings.py, repeatable (default: the model's), "
                        "e.g. return_retake=0 to draw a shot that repeats an earlier prompt anew instead of as a "
                        "re-take of its first appearance")
    g.add_argument("--guidance", default=None,
                   help="classifier-free guidance for every segment, 1-20; 1 = none, higher follows the prompts more "
                        "closely at the cost of sharper cuts between segments (default: the model's; the embedded "
                        "model's is 3, and 6 on each shot's first segment, none in its last 2 of 8 steps)")
    _add_model_args(g)

    r = sub.add_parser("recall", help="compress a video's history and reconstruct one of its frames from memory alone")
    r.add_argument("--video", required=True)
    r.add_argument("--at", type=float, required=True, help="time of the frame to recall, in seconds from the video's start")
    r.add_argument("--out", required=True, help="output .png: true frame | recalled frame | error map")
    r.add_argument("--history", type=float, default=20.0,
                   help="seconds of video to compress: those that end at --at, or the first ones when --at is "
                        "nearer the start (default 20)")
    _add_model_args(r)

    from ..train.cli import add_train_parsers

    add_train_parsers(sub, full=argv is None or _command_of(argv) == "train")
    return parser


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    return name


def _load(args):
    import torch

    from ..model.bundle import load_model
    from ..sampling.pipeline import PFPPipeline
    from ..runtime.apply import apply_profile

    device = _device(args.device)
    # bf16 on load for GPUs: a 14B DiT in float32 would need ~57 GB of RAM
    model = load_model(args.model, memory_dir=args.memory, torch_dtype=torch.bfloat16 if device == "cuda" else None)
    info = apply_profile(model, args.profile, device)
    print(f"runtime: {info.summary()}", file=sys.stderr)
    if not model.trained:
        print(f"note: model {model.label}", file=sys.stderr)
    return PFPPipeline(model, device=info.device, dtype=info.dtype)


def cmd_generate(args) -> int:
    from ..film.export import write_film
    from ..film.footage import check_footage, footage_record, source_record
    from ..film.project import Project, check_folder_for
    from ..film.session import Failed, GenerationSession, SegmentDone
    from ..film.storyboard import parse_storyboard, read_storyboard_file
    from ..io.atomic import atomic_copy
    from ..io.video import video_info
    from ..io.text import quote
    from ..sampling.settings import SamplerSettings
    from .options import check_options, check_runtime_options

    record = _export_record(args)
    if record is None and not args.storyboard:
        raise ValueError("--storyboard is required (or --restore with --from an MP4 exported by PFP Studio)")
    # everything a user gave is checked before the model loads (--crf 99 used to fail after generating)
    vars(args).update(check_options(seed=args.seed, steps=args.steps, crf=args.crf, fps=args.fps,
                                    guidance=args.guidance))
    check_runtime_options(args.profile, args.device)
    SamplerSettings().with_text_overrides(args.sampler)  # a bad --sampler fails before the model loads
    if record is not None and (args.steps is not None or args.guidance is not None or args.sampler):
        raise ValueError("--restore regenerates the export with its own settings: leave out --steps, --guidance "
                         "and --sampler")
    text = record.storyboard if record is not None else read_storyboard_file(args.storyboard)
    storyboard = parse_storyboard(text)
    source = check_footage(args.footage, args.still_seconds) if args.footage and record is None else None
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got {quote(out.name)}")
    folder = Path(args.project) if args.project else out.with_name(out.stem + "_project")
    check_folder_for(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    project = Project(folder)
    pipe = _load(args)
    sampler = pipe.model.sampler.overridden(args.steps, args.guidance).with_text_overrides(args.sampler)
    session = GenerationSession(pipe, project)
    if record is not None:
        print(f"restoring '{record.path.name}': {record.describe()}", file=sys.stderr)
        if record.model and record.model != pipe.model.name:
            print(f"note: it was made with model {record.model}, restoring with {pipe.model.name} (--model)", file=sys.stderr)
    wanted = (source_record(source) if source is not None else {"footage": {"source": record.path.name}}
              if record is not None and record.footage_frames else {})
    if wanted != footage_record(project):  # another footage (or none): what was made from the old one is kept as a take
        take = session.replace_footage(_footage(pipe, source, record), source)
        if take is not None:
            print(f"the project's segments were made from another footage: kept in {take}", file=sys.stderr)
    if record is not None:
        plan = session.plan_restore(record)
    else:
        plan = session.plan(text, args.seed, sampler)
    n = len(plan.segments)
    print(f"{pipe.model.label}: {n} segments (at most {pipe.segment_seconds:.2f} s, cut at every shot) "
          f"for {storyboard.duration:g} s -> project '{project.folder}'", file=sys.stderr)
    if plan.keep:
        print(f"resuming: {plan.keep} finished segments found in the project", file=sys.stderr)
    if project.finished_segments() > plan.keep:
        print(f"{project.finished_segments() - plan.keep} finished segments were made from another storyboard or "
              "other settings: they are kept in the project's takes/ folder", file=sys.stderr)

    def show(event):
        if isinstance(event, SegmentDone):
            seg = plan.segments[event.segment]
            print(f"segment {seg.index + 1}/{n} [{seg.start:.1f}-{seg.end:.1f} s] {event.memory_tokens} memory tokens, "
                  f"{event.seconds:.1f} s: {seg.prompt}", file=sys.stderr)

    end = session.run(plan, show)
    if isinstance(end, Failed):
        raise end.error
    with_footage = args.export == "with-footage"
    film = write_film(project, crf=args.crf, with_footage=with_footage)
    target_fps = args.fps or pipe.model.video.fps
    if target_fps == pipe.model.video.fps:  # the project's film is the output: copy, do not encode again
        atomic_copy(film, out)  # never in place: a kill during the copy left a truncated MP4
    else:
        write_film(project, out, crf=args.crf, fps=target_fps, with_footage=with_footage)
    print(f"wrote {out} ({video_info(out).num_frames} frames at {target_fps} fps)")
    return 0


def _export_record(args):
    """The record of `--from` when it is an MP4 exported by PFP Studio and --restore asks to restore it; None to
    continue from the footage; a clear error when the user has not said which of the two they want."""
    from ..film.export import read_export_record

    if args.restore and not args.footage:
        raise ValueError("--restore needs --from with an MP4 exported by PFP Studio")
    if args.restore and args.as_footage:
        raise ValueError("choose one of --restore and --as-footage")
    if not args.footage or args.as_footage:
        return None
    record = read_export_record(args.footage)
    if args.restore and record is None:
        raise ValueError(f"--restore: '{Path(args.footage).name}' was not exported by PFP Studio (no storyboard in its comment)")
    if record is not None and not args.restore:
        raise ValueError(f"'{Path(args.footage).name}' was exported by PFP Studio ({record.describe()}): add --restore to "
                         "regenerate its project from its storyboard and seeds, or --as-footage to continue from its frames")
    if record is not None and args.storyboard:
        raise ValueError("--restore takes the storyboard from the export's comment: leave out --storyboard")
    return record


def _footage(pipe, source, record):
    """This run's footage, prepared and encoded (None: the film starts from nothing)."""
    from ..film.export import restore_footage
    from ..film.footage import prepare_footage

    if source is not None:
        footage = prepare_footage(pipe, source.path, source.still_seconds)
    else:
        footage = restore_footage(pipe, record) if record is not None else None
    if footage is not None:
        tokens = pipe.model.memory_encoder(footage.latents.to(pipe.device, pipe.dtype)).num_tokens
        print(f"footage '{footage.source_name}': {footage.num_frames} frames = {footage.seconds:.2f} s at the model's "
              f"{footage.fps:g} fps, {tokens:,} memory tokens{'; ' + footage.note if footage.note else ''}; "
              "storyboard times count from its end", file=sys.stderr)
    return footage


def cmd_recall(args) -> int:
    import numpy as np

    from PIL import Image

    from ..evaluation.metrics import error_heatmap
    from ..film.recall_clip import check_recall_request, encode_clip, prepare_clip
    from ..io.video import tensor_to_frames

    from ..io.atomic import atomic_path
    from ..io.text import quote
    from .options import check_options, check_runtime_options

    vars(args).update(check_options(seed=args.seed, steps=args.steps))
    check_runtime_options(args.profile, args.device)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {quote(out.name)}")
    names = ("--at ", "--history")
    check_recall_request(args.video, args.at, args.history, names)  # bad input fails before the model loads
    pipe = _load(args)
    clip = prepare_clip(pipe, args.video, args.at, args.history, names)
    frame_index = clip.frame_index(args.at)
    res = pipe.recall(encode_clip(pipe, clip), frame_index, truth_frames=clip.frames, steps=args.steps, seed=args.seed)
    truth, recalled = tensor_to_frames(res.truth[:, None])[0], tensor_to_frames(res.recalled[:, None])[0]
    panel = np.concatenate([truth, recalled, error_heatmap(res.recalled, res.truth)], axis=1)
    with atomic_path(out) as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")
    print(f"recalled frame {frame_index} ({clip.time_of(frame_index):.2f} s) of {clip.frames.shape[1]} from "
          f"{res.memory_tokens} memory tokens (compression {res.compression_ratio:.0f}:1) in {res.seconds:.1f} s")
    print(f"PSNR {res.psnr:.2f} dB  SSIM {res.ssim:.3f}  (history-mean baseline PSNR {res.baseline_psnr:.2f} dB)")
    print(f"wrote {out} (true | recalled | error)")
    return 0


COMMANDS = {"generate": cmd_generate, "recall": cmd_recall}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted: finished segments are kept in the project folder", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line, never a traceback, for anything a user can cause
        from ..film.session import is_out_of_memory

        if is_out_of_memory(err):
            print("error: out of GPU memory; try --device cpu or a smaller profile (finished segments are kept)", file=sys.stderr)
            return 2
        if isinstance(err, EXPECTED_ERRORS):
            from ..io.text import shorten

            print(f"error: {shorten(err, 2000)}", file=sys.stderr)  # never megabytes of echoed input
            return 2
        raise
