"""`python -m pfp_app train ...` and `python -m pfp_app evaluate ...` subcommands."""

from __future__ import annotations

import dataclasses
import json


def add_train_parsers(sub, full: bool = True) -> None:
    """The train, captions, pack-model and evaluate subcommands. full=False leaves out train's options, which
    need the trainer (and torch) imported: `python -m pfp_app --help` then prints at once."""
    t = sub.add_parser("train", help="train the codec, G alone (base), stage 1 (retrieval pretraining) or stage 2 (next-segment fine-tuning)",
                       description="Runs on the CPU, one GPU, or several through `accelerate launch` / torchrun.")
    if full:
        _add_train_options(t)
    t.set_defaults(handler=_cmd_train)

    add_caption_parser(sub)
    add_bank_parser(sub)
    add_pack_model_parser(sub)
    e = sub.add_parser("evaluate", help="recall scores on held-out clips: PSNR/SSIM vs φ zeroed and the history mean")
    e.add_argument("--model", required=True)
    e.add_argument("--num-clips", type=int, default=16)
    e.add_argument("--clip-seconds", type=float, default=20.0)
    e.add_argument("--data-seed", type=int, default=10_000, help="held-out: never a training seed")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--queries", type=int, default=6, help="frames recalled per clip, spread over the history")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", default=None, help="write the scores as JSON here")
    e.add_argument("--bank", default=None, help="also score the held-out real clips and held-out photo-motion clips of "
                                               "this bank (`python -m pfp_app bank`), clip by clip")
    e.add_argument("--photo-clips", type=int, default=4, help="held-out photo-motion clips to score with --bank")
    e.add_argument("--skip-world", action="store_true", help="only the bank's clips")
    e.add_argument("--memory-guidance", type=float, default=0.0,
                   help="recall with memory guidance (the studio's inspector uses the model's, pfp_model.json's "
                        "memory_guidance_scale); 0: the memory alone, unguided, as the model card's tables")
    e.set_defaults(handler=_cmd_evaluate)


def _add_train_options(t) -> None:
    """One option per TrainConfig field (--max-steps for max_steps), its help the field's (common.option)."""
    from .common import STAGES, TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%")
        if f.name == "stage":
            t.add_argument(flag, choices=STAGES, required=True, help=help_)
        elif f.type in ("bool", bool):
            t.add_argument(flag, action="store_true", default=f.default, help=help_)
        else:
            kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
            t.add_argument(flag, type=kind, default=f.default, help=f"{help_} (default: %(default)s)")


def add_caption_parser(sub) -> None:
    c = sub.add_parser("captions", help="encode the storyboard world's captions (for GPU machines without the text encoder)")
    c.add_argument("--out", required=True, help=".safetensors file to write")
    c.add_argument("--pairs", type=int, default=400, help="two-character captions to include (all single ones always are)")
    c.add_argument("--max-tokens", type=int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(handler=_cmd_captions)


def add_bank_parser(sub) -> None:
    b = sub.add_parser("bank", help="build the real-footage bank (photos and clips from installed packages) for training",
                       description="Crops of the photographs and resampled clips that Debian's opencv-doc, gnome-backgrounds, "
                                   "mate-backgrounds, plasma-workspace-wallpapers, desktop-base and scikit-image installed; "
                                   "nothing is downloaded. Held out: the clips Megamind and cup, and a tenth of the photos.")
    b.add_argument("--out", default="data/bank", help="folder to write (replaced; default data/bank)")
    b.add_argument("--size", type=int, default=128, help="clip frame size: the model's (default 128)")
    b.add_argument("--fps", type=float, default=8.0, help="clip frame rate: the model's (default 8)")
    b.add_argument("--crop", type=int, default=192, help="photo crop side, larger than --size so the camera can move (default 192)")
    b.add_argument("--per-scale", type=int, default=2, help="random crops per photo at each larger scale (default 2)")
    b.add_argument("--max-photos", type=int, default=None, help="use at most this many photographs (tests)")
    b.add_argument("--no-clips", action="store_true", help="photographs only")
    b.set_defaults(handler=_cmd_bank)


def _cmd_bank(args) -> int:
    from ..data.bank import build_bank

    build_bank(args.out, size=args.size, fps=args.fps, crop=args.crop, per_scale=args.per_scale,
               max_photos=args.max_photos, clips=not args.no_clips)
    return 0


def add_pack_model_parser(sub) -> None:
    x = sub.add_parser("pack-model", aliases=["export"],
                       help="pack a trained model folder as fp16 safetensors shards (what assets/ ships; "
                            "'export' is a deprecated name for it; films are exported by `generate`)")
    x.add_argument("--model", required=True, help="trained model folder (e.g. runs/ft/model)")
    x.add_argument("--out", required=True, help="folder to write")
    x.add_argument("--max-shard-size", default="15MB", help="largest safetensors shard (default 15MB)")
    x.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    import shutil
    from pathlib import Path

    import torch

    from ..model.bundle import load_model

    model = load_model(args.model)
    out = model.save(args.out, max_shard_size=args.max_shard_size, dtype=torch.float16)
    for extra in ("training.json",):
        if (Path(args.model) / extra).exists():
            shutil.copy(Path(args.model) / extra, out / extra)
    print(f"packed {args.model} -> {out} (fp16)")
    return 0


def _cmd_captions(args) -> int:
    import random
    from pathlib import Path

    from ..data.world import all_captions
    from ..film.storyboard import parse_storyboard
    from .data import save_caption_table

    singles = all_captions(max_characters=1)
    pairs = sorted(set(all_captions(2)) - set(singles))
    presets = {s.prompt for f in sorted(Path("presets/storyboards").glob("*.txt")) for s in parse_storyboard(f.read_text()).shots}
    chosen = sorted(set(singles) | set(random.Random(args.seed).sample(pairs, min(args.pairs, len(pairs)))) | presets)
    n = save_caption_table(args.out, chosen, args.max_tokens)
    print(f"wrote {n} caption embeddings to {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB)")
    return 0


def _cmd_train(args) -> int:
    import torch.distributed as dist

    from .trainer import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        state = train(cfg)
    finally:
        distributed = dist.is_available() and dist.is_initialized()
        main_process = not distributed or dist.get_rank() == 0
        if distributed:  # torchrun / accelerate launch: leave the process group cleanly
            dist.destroy_process_group()
    if main_process:
        print(json.dumps(state, indent=2))
    return 0


def _cmd_evaluate(args) -> int:
    import torch

    from ..model.bundle import load_model
    from ..data.world import WorldClipDataset
    from ..evaluation.evaluate import (evaluate_clips, evaluate_recall, format_clip_scores, format_scores, heldout_photo_clips,
                           heldout_real_clips, video_codec_scores)

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    model = load_model(args.model).to(device)
    scores = {}
    # the bank's clips first: a bank without them fails here, not after the world's minutes of recall
    real_clips = heldout_real_clips(args.bank, model.video.height, model.video.fps) if args.bank else None
    if not args.skip_world:
        scores = evaluate_recall(model, num_clips=args.num_clips, seconds=args.clip_seconds, seed=args.data_seed,
                                 steps=args.steps, queries=args.queries, device=device,
                                 memory_guidance=args.memory_guidance)
        print(format_scores(scores))
        world = WorldClipDataset(args.num_clips, seconds=args.clip_seconds, size=model.video.height, fps=model.video.fps,
                                 seed=args.data_seed)
        world_codec = video_codec_scores(model, {f"world-{i}": world[i]["frames"] for i in range(args.num_clips)}, device)
        scores["world_video_codec"] = {k: world_codec[k] for k in ("video_codec_psnr", "video_mean_psnr", "video_codec_ssim")}
        print(f"world clips, codec in video mode (all frames): {world_codec['video_codec_psnr']['mean']:.2f} ± "
              f"{world_codec['video_codec_psnr']['ci95']:.2f} dB (clip's mean frame {world_codec['video_mean_psnr']['mean']:.2f} dB)")
    if args.bank:
        v = model.video
        real = evaluate_clips(model, real_clips, args.steps, args.queries, args.data_seed, device, args.memory_guidance)
        print(format_clip_scores(real, "held-out real clips (recall over the whole clip as history)"))
        photos = evaluate_clips(model, heldout_photo_clips(args.bank, args.photo_clips, args.clip_seconds, v.height, v.fps,
                                                           args.data_seed), args.steps, args.queries, args.data_seed, device,
                              args.memory_guidance)
        print(format_clip_scores(photos, "held-out photographs in motion"))
        scores["real_clips"], scores["photo_clips"] = real, photos
    if args.out:
        with open(args.out, "w") as f:
            json.dump(scores, f, indent=2)
    return 0
