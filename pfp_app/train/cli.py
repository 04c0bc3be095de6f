"""`python -m pfp_app train ...` and `python -m pfp_app evaluate ...` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_train_parsers(sub) -> None:
    from .trainer import STAGES, TrainConfig

    t = sub.add_parser("train", help="train the codec, G alone (base), stage 1 (retrieval pretraining) or stage 2 (next-segment fine-tuning)",
                       description="Runs on the CPU, one GPU, or several through `accelerate launch` / torchrun.")
    t.add_argument("--stage", choices=STAGES, required=True)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("stage",):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(flag, action="store_true", default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
            if "float" in str(f.type):
                kind = float
            elif "int" in str(f.type):
                kind = int
            t.add_argument(flag, type=kind, default=f.default)
    t.set_defaults(handler=_cmd_train)

    add_caption_parser(sub)
    add_export_parser(sub)
    e = sub.add_parser("evaluate", help="recall scores on held-out clips: PSNR/SSIM vs φ zeroed and the history mean")
    e.add_argument("--model", required=True)
    e.add_argument("--num-clips", type=int, default=16)
    e.add_argument("--clip-seconds", type=float, default=20.0)
    e.add_argument("--data-seed", type=int, default=10_000, help="held-out: never a training seed")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--queries", type=int, default=6, help="frames recalled per clip, spread over the history")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", default=None, help="write the scores as JSON here")
    e.set_defaults(handler=_cmd_evaluate)


def add_caption_parser(sub) -> None:
    c = sub.add_parser("captions", help="encode the storyboard world's captions (for GPU machines without the text encoder)")
    c.add_argument("--out", required=True, help=".safetensors file to write")
    c.add_argument("--pairs", type=int, default=400, help="two-character captions to include (all single ones always are)")
    c.add_argument("--max-tokens", type=int, default=32)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(handler=_cmd_captions)


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="copy a trained model folder as fp16 safetensors shards (what assets/ ships)")
    x.add_argument("--model", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--max-shard-size", default="15MB")
    x.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    import shutil
    from pathlib import Path

    import torch

    from ..model import load_model

    model = load_model(args.model)
    out = model.save(args.out, max_shard_size=args.max_shard_size, dtype=torch.float16)
    for extra in ("training.json",):
        if (Path(args.model) / extra).exists():
            shutil.copy(Path(args.model) / extra, out / extra)
    print(f"exported {args.model} -> {out} (fp16)")
    return 0


def _cmd_captions(args) -> int:
    import random
    from pathlib import Path

    from ..data.world import all_captions
    from ..storyboard import parse_storyboard
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

    from ..model import load_model
    from .evaluate import evaluate_recall, format_scores

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    model = load_model(args.model).to(device)
    scores = evaluate_recall(model, num_clips=args.num_clips, seconds=args.clip_seconds, seed=args.data_seed,
                             steps=args.steps, queries=args.queries, device=device)
    print(format_scores(scores))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(scores, f, indent=2)
    return 0
