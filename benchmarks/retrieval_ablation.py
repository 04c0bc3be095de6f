"""Paper Table 1 on our data (issue 6): frame retrieval after stage-1 pretraining, per φ variant and rate.

    python benchmarks/retrieval_ablation.py --plan                      # the runs, their state, time estimates
    python benchmarks/retrieval_ablation.py --resume --budget-min 9 \
        --text-table .carry/captions.safetensors --results benchmarks/results/ablation.json   # one GPU call
    python benchmarks/retrieval_ablation.py --scale cpu --budget-min 600 --resume   # the reduced protocol on a CPU
    python benchmarks/retrieval_ablation.py --data /videos/train --eval-data /videos/heldout ...  # on your own videos
    python benchmarks/retrieval_ablation.py --tiny --out /tmp/ablation  # CPU smoke test (tests/test_ablation_smoke.py)

Protocol (arXiv 2512.23851 Table 1, on the procedural storyboard world):
- One shared, frozen codec: the shipped model's (assets/pfp-default), whose VAE was trained and frozen
  before any memory training; stage 1 never touches it, so every variant sees the same latents.
- Every run = the `default` G config + a φ of the run's variant and rate, BOTH freshly initialised from
  the run's seed: for one seed, G's initial weights are identical across variants and rates (G is built
  before φ, from the same seed), and φ's LR branch / large patchifier start from G's own patch embedding.
  Not G from the shipped model: that G was trained with the proposed 4x4x2 φ (stage 1, then stage 2), so
  it already reads that variant's tokens at that rate and would favour it in both comparisons.
- With `base_steps` > 0 (the CPU scale), G first learns to denoise the world's segments ALONE, without any
  memory (trainer stage `base`), once per seed; every variant and rate of that seed then starts from that
  G. This is the paper's set-up in small (stage 1 starts from a pretrained video model, Wan, that has never
  seen memory tokens), it is neutral between the variants, and it spends a small budget on reading the
  memory rather than on learning to denoise at all.
- Stage 1 through the app's own trainer (`python -m pfp_app train --stage pretrain --init INIT`): equal
  budgets in optimizer steps (not minutes: rates differ in speed), the same batch, learning rate, warm-up,
  EMA, training clips (one data seed) for every run; several seeds (each seed changes G's and φ's
  initial weights and the batch order).
- Evaluation on held-out clips (another data seed): latent frames spread over the whole history are
  retrieved from noise given φ(H) alone (no caption) with `pfp_app.evaluation.evaluate.recall_clip_batch`,
  decoded and compared with the true frames; PSNR/SSIM (LPIPS where the core reports it), averaged per
  clip over its queried frames, then over seeds; mean ± 95% t-interval over clips. The same clips and
  sampler seeds for every run, so orderings are PAIRED per-clip differences with their own interval.
  Beside: φ's output zeroed (same model), the history's mean frame, the codec's reconstruction (ceiling).

Resumable in ≤ 10-minute calls: runs train one after another within --budget-min (each through the
trainer's time budget and --resume checkpoints); a run that would not finish in what is left of the call
is left for the next one; finished runs are evaluated once and recorded in the results JSON, which is
small, so it can come back from the GPU machine and travel with the working tree to the next call (the
run folders under --out only survive while the same machine stays warm).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = ("large_patchifier", "only_lr", "without_lr", "proposed")  # the paper's row order
RATES = ("4x4x2", "2x2x2", "2x2x1")
METHOD_NAMES = {"large_patchifier": "Large Patchifier (FramePack-style)", "only_lr": "Only LR",
                "without_lr": "Without LR", "proposed": "Proposed"}
# arXiv 2512.23851, Table 1: (variant, rate) -> (PSNR, SSIM, LPIPS)
PAPER_TABLE1 = {
    ("large_patchifier", "4x4x2"): (12.93, 0.412, 0.365),
    ("only_lr", "4x4x2"): (15.21, 0.472, 0.212),
    ("without_lr", "4x4x2"): (15.73, 0.423, 0.198),
    ("proposed", "4x4x2"): (17.41, 0.596, 0.171),
    ("proposed", "2x2x2"): (19.12, 0.683, 0.152),
    ("proposed", "2x2x1"): (20.19, 0.705, 0.121),
}
# the orderings issue 6 asks about: (label, better (variant, rate), worse (variant, rate))
ORDERINGS = (
    ("Proposed > Without LR (4×4×2)", ("proposed", "4x4x2"), ("without_lr", "4x4x2")),
    ("Only LR > Large Patchifier (4×4×2)", ("only_lr", "4x4x2"), ("large_patchifier", "4x4x2")),
    ("Proposed 2×2×1 > 2×2×2", ("proposed", "2x2x1"), ("proposed", "2x2x2")),
    ("Proposed 2×2×2 > 4×4×2", ("proposed", "2x2x2"), ("proposed", "4x4x2")),
)
CHAIN = ("Proposed 2×2×1 > 2×2×2 > 4×4×2", ("Proposed 2×2×1 > 2×2×2", "Proposed 2×2×2 > 4×4×2"))
METRICS = (("psnr", True), ("ssim", True), ("lpips", False))  # (name, higher is better)
NOT_ON_GPU = ("**Not yet measured on a GPU**: these numbers come from a CPU/tiny run (a smoke test of the "
              "code path), not from the protocol; they say nothing about the paper's claims.")
CPU_SCALE = ("**CPU scale** (`--scale cpu`): the protocol shrunk to a 2-core CPU (G `small` at 64×64, a few "
             "thousand samples per run). A check of the orderings at small scale, not the paper's setting.")


def scale_note(protocol: dict, devices: list[str]) -> str | None:
    """What the table must say about where its numbers come from (None: the full protocol on a GPU)."""
    if protocol.get("config") == "small" and devices:
        return CPU_SCALE
    if protocol.get("config") == "tiny" or all(d == "cpu" for d in devices):  # also: no calls yet
        return NOT_ON_GPU
    return None


def source_name(source: str) -> str:
    return "world" if source == "world" else f"`{Path(source).name}/` video"


def check_sources(s: Settings) -> None:
    """Held-out clips must be clips never trained on: windows of the training videos would not be."""
    if s.data != "world" and not s.eval_data:
        raise SystemExit(f"--data {s.data} needs --eval-data: a folder of other videos for the held-out clips "
                         "(windows of the training videos are not held out)")
    for folder in {s.data, s.eval_data} - {"world", ""}:
        if not Path(folder).is_dir():
            raise SystemExit(f"video folder {folder!r} does not exist")
    if s.eval_data and s.eval_data != "world" and Path(s.eval_data).resolve() == Path(s.data).resolve():
        raise SystemExit("--eval-data must be another folder than --data (held-out clips are never trained on)")


def start_of_g(p: dict) -> str:
    """How G starts, for the tables' protocol line."""
    if p.get("base_steps"):
        return (f"G `{p['config']}` first trained alone (no memory, stage `base`) for {p['base_steps']} steps per "
                "seed, the start of every run of that seed")
    if p.get("g_from"):
        return f"G from the trained model `{p['g_from']}` (the same G for every seed; φ fresh per seed)"
    return f"G `{p['config']}` (fresh, per seed)"


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class Settings:
    """What every run shares. Fields above `_protocol_end` define the experiment (checked on --resume)."""

    config: str = "default"  # MODEL_CONFIGS name of G and φ
    data: str = "world"  # training clips: the procedural world, or a folder of videos
    eval_data: str = ""  # held-out clips: '' = the world with eval_seed; a folder of OTHER videos with --data DIR
    codec: str = "default"  # model spec whose (frozen) codec and video spec every run shares
    steps: int = 800  # optimizer steps per training stage, equal for every run
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 200
    num_clips: int = 1024  # training clips (procedural world)
    clip_seconds: float = 20.0
    data_seed: int = 2
    num_query: int = 8  # |Ω| per stage-1 sample
    ema_decay: float = 0.999
    eval_clips: int = 16  # held-out clips
    eval_seconds: float = 20.0
    eval_seed: int = 10_000
    eval_steps: int = 16  # sampler steps of each recall
    eval_queries: int = 6  # frames per clip, spread over the whole history
    eval_batch: int = 4
    size: int = 0  # frame side of every run's video; 0: the codec model's own (128 for `default`)
    base_steps: int = 0  # > 0: a memory-free G per seed (stage `base`), the start of every run of that seed
    _protocol_end: None = None
    latent_cache: str | None = None  # encoded training clips shared by all runs (default OUT/latents)
    base_dir: str | None = None  # where the memory-free Gs live (default OUT/base); the two benchmarks can share it
    workers: int = 0  # processes rendering training clips
    text_table: str | None = None  # precomputed caption embeddings (GPU machines have no MiniLM)
    checkpoint_every_min: float = 2.0
    in_process: bool = False  # call the trainer in this process (CPU smoke) instead of `python -m pfp_app train`
    log_every: int = 50
    tiny: bool = False

    def protocol(self) -> dict:
        names = [f.name for f in dataclasses.fields(self)]
        return {k: getattr(self, k) for k in names[: names.index("_protocol_end")]}


TINY = dict(config="tiny", codec="tiny-random", steps=3, batch_size=2, lr=1e-3, warmup_steps=1, num_clips=4,
            clip_seconds=4.0, eval_clips=3, eval_seconds=4.0, eval_steps=2, eval_queries=2, eval_batch=3,
            workers=0, in_process=True, log_every=1, tiny=True)
# The same protocol shrunk to what a 2-core CPU trains in hours: G `small` (4 blocks, width 256) at 64x64
# with the shipped codec, a shared memory-free G first (see the docstring), batch 8. Not the paper's
# scale: a CPU-sized check of the orderings, reported as such.
CPU = dict(config="small", codec="default", size=64, base_steps=1200, steps=900, batch_size=8, lr=3e-4,
           warmup_steps=100, num_clips=512, clip_seconds=20.0, eval_clips=16, eval_steps=16, eval_queries=6,
           eval_batch=4, checkpoint_every_min=5.0, log_every=25)
SCALES = {"gpu": {}, "cpu": CPU, "tiny": TINY}
# H100 samples/s of stage 1 at batch 32 (shipped model's pretrain log: ~175 at 4x4x2); other rates guessed
# from their token counts until a finished run of that rate measured it
GUESS_SAMPLES_PER_S = {"4x4x2": 175.0, "2x2x2": 140.0, "2x2x1": 105.0, "base": 200.0}
GUESS_OVERHEAD_S = 60.0  # process start, rendering + encoding the training clips, saving
GUESS_EVAL_S = 30.0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------- results file

def load_results(path: Path, benchmark: str, protocol: dict, resume: bool, defaults: dict | None = None) -> dict:
    """The results JSON (created if missing). On an existing file: --resume needed, and the same protocol.
    A protocol field added after the file was written counts as agreeing while it holds its default
    (`defaults`: the protocol of the default settings), which is what the older code did."""
    if path.exists():
        res = json.loads(path.read_text())
        if not resume:
            raise SystemExit(f"{path} already holds results; pass --resume to continue them, or choose another "
                             "--out / --results")
        old = res.get("protocol", {})
        missing = {k: v for k, v in protocol.items() if k not in old}
        if defaults is not None and old and all(defaults.get(k, object()) == v for k, v in missing.items()):
            old = {**old, **missing}
            res["protocol"] = old
        if old != protocol:
            raise SystemExit(f"{path} was measured under another protocol ({protocol_diff(old, protocol)}: "
                             "(old, new)); results of different protocols are never mixed: choose another --results")
        return res
    return {"benchmark": benchmark, "protocol": protocol, "runs": {}, "calls": []}


def protocol_diff(a: dict, b: dict) -> dict:
    """{field: (a's value, b's value)} for every field where two protocols differ."""
    return {k: (a.get(k), b.get(k)) for k in {**a, **b} if a.get(k) != b.get(k)}


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a call killed at its limit never leaves half a file


# ---------------------------------------------------------------------------------------------- models and training

def build_init_folder(folder: Path, s: Settings, variant: str, rate: str, seed: int, name: str,
                      transformer_from: Path | None = None) -> Path:
    """A loadable model folder: the shared codec + G (config, seed; or the trained G of `transformer_from`)
    + φ (variant, rate, seed), all fp32, video of side `s.size` (or the codec model's own).

    Deterministic, so an existing folder is reused. This is what `--init` cannot express today: the
    trainer's `_init_model` takes a config name (fixed φ) or a folder; see the README for the core change.
    """
    import torch

    from pfp_app.model.bundle import BUNDLE_FILE, MODEL_CONFIGS, PFPModel, build_memory_encoder, build_random_model, load_model

    if (folder / BUNDLE_FILE).exists():
        return folder
    base = build_random_model(s.config, seed=seed)  # torch.manual_seed(seed), then G, VAE, φ: G is seed-only
    # only G (transformer_from) and the codec (s.codec) are taken from those folders: with new_memory a folder
    # without φ weights loads too (a GPU call may leave them behind to fit its transfer limit)
    unused_phi = dict(MODEL_CONFIGS[s.config].memory)
    if transformer_from is not None:
        base.transformer = load_model(transformer_from, torch_dtype=torch.float32, new_memory=unused_phi).transformer
    source = load_model(s.codec, torch_dtype=torch.float32, new_memory=unused_phi)
    video = dataclasses.replace(source.video, height=s.size, width=s.size) if s.size else source.video
    t = base.transformer.config
    if source.codec.latent_channels != t.in_channels:
        raise SystemExit(f"the codec of {s.codec!r} has {source.codec.latent_channels} latent channels, "
                         f"G ({s.config}) expects {t.in_channels}")
    torch.manual_seed(seed)  # φ's initial weights: a function of (seed, variant, rate) alone
    memory_cfg = dict(MODEL_CONFIGS[s.config].memory, variant=variant, rate=rate)
    encoder = build_memory_encoder(base.transformer, memory_cfg)
    model = PFPModel(name, base.transformer, encoder, source.codec, video, trained=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    tmp.replace(folder)
    return folder


def train_state(out: Path) -> dict | None:
    p = out / "state" / "state.json"
    return json.loads(p.read_text()) if p.exists() else None


def is_trained(out: Path, steps: int) -> bool:
    st = train_state(out)
    return bool(st and st["step"] >= steps and (out / "model" / "pfp_model.json").exists())


def run_training(init: Path, out: Path, stage: str, s, seed: int, budget_min: float, max_steps: int,
                 **extra) -> dict | None:
    """One trainer session of `stage` up to `max_steps` (resumes OUT/state). `s`: Settings or any object with
    the same training fields. A finished run is not touched (no process start, no clip rendering)."""
    if is_trained(out, max_steps):
        return train_state(out)
    cfg = dict(stage=stage, init=str(init), out=str(out), data=s.data, num_clips=s.num_clips,
               clip_seconds=s.clip_seconds, data_seed=s.data_seed, batch_size=s.batch_size, lr=s.lr,
               warmup_steps=s.warmup_steps, max_steps=max_steps, time_budget_min=round(budget_min, 3),
               checkpoint_every_min=s.checkpoint_every_min, resume=True, seed=seed, num_query=s.num_query,
               ema_decay=s.ema_decay, log_every=s.log_every, workers=s.workers, text_table=s.text_table,
               latent_cache=s.latent_cache)
    cfg.update(extra)
    out.mkdir(parents=True, exist_ok=True)
    if s.in_process:
        from pfp_app.train.trainer import TrainConfig, train

        train(TrainConfig(**cfg))
        return train_state(out)
    argv = [sys.executable, "-m", "pfp_app", "train"]
    for k, v in cfg.items():
        if v is None or v is False:
            continue
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    log = out / "train.log"
    print(f"    $ {' '.join(argv[1:])}  (log: {log})", flush=True)
    with log.open("a") as f:
        try:
            proc = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=budget_min * 60 + 240,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            print(f"    trainer overran its budget; killed (resumes from its last checkpoint): {out}", flush=True)
            return train_state(out)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"training failed ({proc.returncode}) for {out}:\n{tail}")
    return train_state(out)


# ---------------------------------------------------------------------------------------------- evaluation

_HELDOUT: dict = {}


def heldout_frames(s: Settings, size: int, fps: int):
    """(N, 3, T, H, W) held-out clips in [-1, 1], made once per process: world clips of another data seed,
    or windows of the --eval-data videos."""
    import torch

    from pfp_app.train.data import clip_dataset

    key = (s.eval_data or s.data, s.eval_clips, s.eval_seconds, size, fps, s.eval_seed)
    if key not in _HELDOUT:
        ds = clip_dataset(s.eval_data or s.data, s.eval_clips, s.eval_seconds, size, fps, s.eval_seed)
        _HELDOUT[key] = torch.stack([ds[i]["frames"] for i in range(len(ds))])
    return _HELDOUT[key]


def evaluate_recall_per_clip(model_dir: Path, s: Settings, device: str) -> dict:
    """Per-clip recall scores (mean over the clip's queried frames), with φ zeroed and the references.

    Built on the core's `recall_clip_batch` (what `python -m pfp_app evaluate` runs, with the same clips and
    sampler seeds), kept per clip instead of pooled: clips are the independent units, and the same clips
    for every run make paired comparisons possible. Any metric the core adds (e.g. 'lpips') is kept too.
    """
    import torch

    from pfp_app.model.bundle import load_model
    from pfp_app.evaluation.evaluate import recall_clip_batch

    t0 = time.time()
    model = load_model(model_dir, torch_dtype=torch.float32).to(device)
    frames = heldout_frames(s, model.video.height, model.video.fps)
    per_clip: dict[str, list[float]] = {}
    queries = None
    for start in range(0, len(frames), s.eval_batch):
        batch = frames[start : start + s.eval_batch]
        b = batch.shape[0]
        for zero in (False, True):
            res = recall_clip_batch(model, batch, s.eval_queries, s.eval_steps, s.eval_seed + start, device,
                                    zero_memory=zero)
            for k, vals in res.items():
                if zero and k.startswith(("mean_", "codec_")):
                    continue  # model-independent references: taken from the memory pass
                queries = len(vals) // b
                for i in range(b):  # values are ordered query-major: index = q * b + i
                    clip_vals = [vals[q * b + i] for q in range(queries)]
                    if any(v is None for v in clip_vals):
                        continue
                    per_clip.setdefault(("zeroed_" if zero else "") + k, []).append(sum(clip_vals) / queries)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"per_clip": per_clip, "queries_per_clip": queries, "seconds": round(time.time() - t0, 1),
            "device": device_name() if device == "cuda" else device}


# ---------------------------------------------------------------------------------------------- statistics

def mean_ci(values) -> tuple[float, float]:
    from pfp_app.evaluation.metrics import mean_and_ci95

    return mean_and_ci95(values)


def compare(better: list[float], worse: list[float], higher_is_better: bool = True) -> dict:
    """Is `better` > `worse` (paired per clip)? Mean difference better - worse, its 95% interval, a verdict:
    'reproduced' (interval entirely on the claimed side), 'reversed' (entirely on the other side),
    'not separated' (the interval holds 0), 'not measured' (no paired values)."""
    if not better or not worse or len(better) != len(worse):
        return {"diff": None, "ci95": None, "n": 0, "verdict": "not measured"}
    diffs = [a - b for a, b in zip(better, worse)]
    m, h = mean_ci(diffs) if len(diffs) > 1 else (diffs[0], math.inf)
    gain = m if higher_is_better else -m  # > 0: in the claimed direction
    verdict = "reproduced" if gain - h > 0 else "reversed" if gain + h < 0 else "not separated"
    return {"diff": m, "ci95": h, "n": len(diffs), "verdict": verdict}


def chain_verdict(verdicts: list[str]) -> str:
    if any(v == "not measured" for v in verdicts):
        return "not measured"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if all(v == "reversed" for v in verdicts):
        return "reversed"
    return "partly (" + ", ".join(verdicts) + ")"


def seed_averaged(runs: list[dict], metric: str) -> list[float]:
    """Per-clip values averaged over the seeds (runs) that have them; [] if none does."""
    lists = [r["eval"]["per_clip"][metric] for r in runs if metric in r.get("eval", {}).get("per_clip", {})]
    if not lists or len({len(v) for v in lists}) != 1:
        return []
    return [sum(col) / len(col) for col in zip(*lists)]


# ---------------------------------------------------------------------------------------------- the plan

@dataclass
class Run:
    variant: str  # a φ variant, or BASE: the seed's memory-free G that every run of the seed starts from
    rate: str
    seed: int

    @property
    def id(self) -> str:
        return f"base_s{self.seed}" if self.is_base else f"{self.variant}_{self.rate}_s{self.seed}"

    @property
    def is_base(self) -> bool:
        return self.variant == BASE


BASE = "base"


def plan_runs(variants, rates, seeds, base: bool = False) -> list[Run]:
    """Table 1's runs: every variant at 4x4x2, Proposed at every rate; seed-major, so a partial result
    already holds a whole table for the first seed. With `base`, each seed starts with its memory-free G."""
    configs = [(BASE, BASE)] if base else []
    configs += [(v, "4x4x2") for v in VARIANTS if v in variants and "4x4x2" in rates]
    configs += [("proposed", r) for r in RATES if r in rates and r != "4x4x2" and "proposed" in variants]
    return [Run(v, r, seed) for seed in seeds for v, r in configs]


# what decides a memory-free G: runs (of either benchmark) whose settings agree on these share it
BASE_FIELDS = ("config", "codec", "size", "base_steps", "batch_size", "lr", "warmup_steps", "num_clips",
               "clip_seconds", "data_seed", "ema_decay")


def base_run_dir(s: Settings, out: Path, seed: int) -> Path:
    """The trainer folder of seed `seed`'s memory-free G. The folder records the settings it was trained
    under, and one trained under others is never used."""
    folder = Path(s.base_dir or out / "base") / f"s{seed}"
    key = {k: getattr(s, k) for k in BASE_FIELDS} | {"seed": seed}
    key_file = folder / "base_protocol.json"
    if key_file.exists() and json.loads(key_file.read_text()) != key:
        raise SystemExit(f"{folder} holds a memory-free G trained under other settings "
                         f"({json.loads(key_file.read_text())}); choose another --base-dir")
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1))
    return folder


def base_init_folder(s: Settings, out: Path, seed: int) -> Path:
    """What a memory-free G starts from: G `config` of the seed (its φ, proposed 4x4x2, is never trained:
    stage `base` leaves φ as it is, and runs replace it)."""
    return build_init_folder(base_run_dir(s, out, seed) / "init", s, "proposed", "4x4x2", seed, f"base-s{seed}")


def run_init_folder(out: Path, s: Settings, r: Run, name: str) -> Path:
    """The init folder of run `r`: fresh G + φ, or the seed's trained base G + a fresh φ."""
    if r.is_base:
        return base_init_folder(s, out, r.seed)
    base = base_run_dir(s, out, r.seed) / "model" if s.base_steps else None
    return build_init_folder(out / "inits" / r.id, s, r.variant, r.rate, r.seed, name, transformer_from=base)


def timing_records(results: dict) -> list[dict]:
    """Training sessions measured so far: {rate, samples, samples_per_s, wall_s_this_call} each."""
    return [dict(r["train"], rate=r["rate"]) for r in results["runs"].values() if r.get("train")]


def estimate_train_s(records: list[dict], rate: str, batch_size: int, steps_left: int) -> float:
    """Seconds to train `steps_left` steps at `rate`, plus the per-session overhead (process start, clips,
    saving): measured on earlier sessions where there are some (the slowest), else the H100 guesses."""
    def mean_sps(rt):
        vals = [r["samples_per_s"] for r in records if r.get("rate") == rt and r.get("samples_per_s")]
        return sum(vals) / len(vals) if vals else None

    sps = mean_sps(rate)
    if sps is None:
        ref = mean_sps("4x4x2")
        sps = GUESS_SAMPLES_PER_S[rate] * (ref / GUESS_SAMPLES_PER_S["4x4x2"] if ref else 1.0)
    overheads = [r["wall_s_this_call"] - r["samples"] / r["samples_per_s"] for r in records
                 if r.get("wall_s_this_call") and r.get("samples_per_s") and r.get("samples")]
    overhead = max([o for o in overheads if o > 0] or [GUESS_OVERHEAD_S])
    return steps_left * batch_size / sps + overhead


# ---------------------------------------------------------------------------------------------- table

def fmt(m: float | None, h: float | None, digits: int) -> str:
    if m is None:
        return "(not measured)"
    return f"{m:.{digits}f} ± {h:.{digits}f}" if h is not None and math.isfinite(h) else f"{m:.{digits}f}"


def summarise(results: dict) -> dict:
    """Rows (mean ± CI per metric), baselines and ordering verdicts, computed from the per-clip values."""
    by_cfg: dict[tuple[str, str], list[dict]] = {}
    for r in results["runs"].values():
        if "eval" in r:
            by_cfg.setdefault((r["variant"], r["rate"]), []).append(r)
    rows = {}
    for cfg, runs in by_cfg.items():
        row = {"seeds": sorted(r["seed"] for r in runs), "per_clip": {}}
        for metric in ("psnr", "ssim", "lpips", "zeroed_psnr", "zeroed_ssim", "mean_psnr"):
            vals = seed_averaged(runs, metric)
            row["per_clip"][metric] = vals
            row[metric] = mean_ci(vals) if vals else (None, None)
        row["seed_psnr"] = [sum(r["eval"]["per_clip"]["psnr"]) / len(r["eval"]["per_clip"]["psnr"])
                            for r in sorted(runs, key=lambda r: r["seed"])]
        row["vs_mean"] = compare(row["per_clip"]["psnr"], row["per_clip"]["mean_psnr"])
        rows[cfg] = row
    evaluated = [r for runs in by_cfg.values() for r in runs]
    baselines = {}
    for key in ("mean_psnr", "mean_ssim", "codec_psnr", "codec_ssim", "mean_lpips", "codec_lpips"):
        vals = seed_averaged(evaluated, key)
        baselines[key] = mean_ci(vals) if vals else (None, None)
    orderings = {}
    for label, better, worse in ORDERINGS:
        orderings[label] = {}
        for metric, higher in METRICS:
            a = rows.get(better, {}).get("per_clip", {}).get(metric, [])
            b = rows.get(worse, {}).get("per_clip", {}).get(metric, [])
            orderings[label][metric] = compare(a, b, higher)
        pa, pb = PAPER_TABLE1[better], PAPER_TABLE1[worse]
        orderings[label]["paper"] = {"psnr": pa[0] - pb[0], "ssim": pa[1] - pb[1], "lpips": pa[2] - pb[2]}
    chain_label, parts = CHAIN
    orderings[chain_label] = {m: {"verdict": chain_verdict([orderings[p][m]["verdict"] for p in parts])}
                              for m, _ in METRICS}
    return {"rows": rows, "baselines": baselines, "orderings": orderings}


def format_table(results: dict, command: str = "") -> str:
    s = summarise(results)
    p = results["protocol"]
    calls = results.get("calls", [])
    devices = sorted({c.get("device", "?") for c in calls})
    note = scale_note(p, devices)
    size = f" at {p['size']}×{p['size']}" if p.get("size") else ""
    any_lpips = any(r["lpips"][0] is not None for r in s["rows"].values())
    lines = ["### Table 1 (ours): frame retrieval after stage-1 pretraining", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"{start_of_g(p)} + φ of each variant/rate (fresh, same seed); shared frozen codec of "
        f"`{p['codec']}`{size}; stage 1 for {p['steps']} steps × batch {p['batch_size']} (lr {p['lr']}, warm-up "
        f"{p['warmup_steps']}, EMA {p['ema_decay']}) on {p['num_clips']} {source_name(p.get('data', 'world'))} "
        f"clips of {p['clip_seconds']:g} s (data seed {p['data_seed']}); recall of {p['eval_queries']} frames "
        f"spread over each of {p['eval_clips']} held-out {p['eval_seconds']:g}-s clips "
        f"({source_name(p.get('eval_data') or p.get('data', 'world'))}, data seed {p['eval_seed']}), "
        f"{p['eval_steps']} sampler steps, no caption. Mean ± 95% interval over clips (per-clip mean over its "
        "frames, averaged over seeds).",
        calls_summary(calls) + (f" · command: `{command}`" if command else ""),
        "",
        "| Method | rate | PSNR ↑ | SSIM ↑ | LPIPS ↓ | PSNR − history mean (dB) | PSNR, φ zeroed | seeds: PSNR each "
        "| paper PSNR / SSIM / LPIPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = [(v, "4x4x2") for v in VARIANTS] + [("proposed", "2x2x2"), ("proposed", "2x2x1")]
    for cfg in order:
        paper = PAPER_TABLE1[cfg]
        name, rate = METHOD_NAMES[cfg[0]], cfg[1].replace("x", "×")
        row = s["rows"].get(cfg)
        if row is None:
            lines.append(f"| {name} | {rate} | (not measured) | | | | | | {paper[0]:.2f} / {paper[1]:.3f} / {paper[2]:.3f} |")
            continue
        vm = row["vs_mean"]
        lpips = fmt(*row["lpips"], 3) if row["lpips"][0] is not None else "n/a"
        lines.append(
            f"| {name} | {rate} | {fmt(*row['psnr'], 2)} | {fmt(*row['ssim'], 3)} | {lpips} | "
            f"{fmt(vm['diff'], vm['ci95'], 2)} | {fmt(*row['zeroed_psnr'], 2)} | "
            f"{', '.join(f'{x:.2f}' for x in row['seed_psnr'])} (seeds {', '.join(map(str, row['seeds']))}) | "
            f"{paper[0]:.2f} / {paper[1]:.3f} / {paper[2]:.3f} |")
    b = s["baselines"]
    lp = lambda k: fmt(*b[k], 3) if b[k][0] is not None else "n/a"  # noqa: E731
    zero = s["rows"].get(("proposed", "4x4x2"))
    lines += [
        f"| *history mean frame (baseline)* | – | {fmt(*b['mean_psnr'], 2)} | {fmt(*b['mean_ssim'], 3)} | "
        f"{lp('mean_lpips')} | | | | – |",
        f"| *φ output zeroed (baseline, Proposed 4×4×2)* | – | "
        f"{fmt(*zero['zeroed_psnr'], 2) if zero else '(not measured)'} | "
        f"{fmt(*zero['zeroed_ssim'], 3) if zero else ''} | n/a | | | | – |",
        f"| *codec reconstruction (ceiling)* | – | {fmt(*b['codec_psnr'], 2)} | {fmt(*b['codec_ssim'], 3)} | "
        f"{lp('codec_lpips')} | | | | – |",
        "",
        "Orderings of the paper (paired per-clip differences, better − worse, mean ± 95% interval; "
        "'reproduced' = the interval lies on the paper's side of 0):",
        "",
        "| ordering | paper Δ PSNR / Δ SSIM | ours Δ PSNR (dB) | PSNR | ours Δ SSIM | SSIM | LPIPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in ORDERINGS:
        o = s["orderings"][label]
        lines.append(
            f"| {label} | {o['paper']['psnr']:+.2f} / {o['paper']['ssim']:+.3f} | "
            f"{fmt(o['psnr']['diff'], o['psnr']['ci95'], 2)} | {o['psnr']['verdict']} | "
            f"{fmt(o['ssim']['diff'], o['ssim']['ci95'], 3)} | {o['ssim']['verdict']} | "
            f"{o['lpips']['verdict'] if any_lpips else 'n/a'} |")
    o = s["orderings"][CHAIN[0]]
    lines.append(f"| {CHAIN[0]} | both above | | {o['psnr']['verdict']} | | {o['ssim']['verdict']} | "
                 f"{o['lpips']['verdict'] if any_lpips else 'n/a'} |")
    if not any_lpips:
        lines += ["", "LPIPS: n/a (the `lpips` package and its AlexNet weights are not installed where this ran; "
                  "`recall_clip_batch` reports no LPIPS yet)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print the runs, their state and time estimates; train nothing")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the results JSON")
    ap.add_argument("--scale", choices=tuple(SCALES), default="gpu",
                    help="gpu: the protocol (default); cpu: shrunk to hours on a 2-core CPU; tiny: smoke test")
    ap.add_argument("--tiny", action="store_true", help="the same as --scale tiny")
    ap.add_argument("--data", default=None, help="training clips: 'world' (default) or a folder of videos")
    ap.add_argument("--eval-data", default=None, help="held-out clips: a folder of other videos (with --data DIR)")
    ap.add_argument("--variants", default=",".join(VARIANTS[::-1]))
    ap.add_argument("--rates", default=",".join(RATES))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=None, help="stage-1 optimizer steps per run (default 800)")
    ap.add_argument("--base-steps", type=int, default=None, help="steps of the memory-free G per seed (0: none)")
    ap.add_argument("--latent-cache", default=None, help="encoded training clips shared by runs (default OUT/latents)")
    ap.add_argument("--base-dir", default=None, help="memory-free Gs (default OUT/base); consistency.py can share them")
    ap.add_argument("--budget-min", type=float, default=9.0, help="wall-clock budget of this call, evaluation included")
    ap.add_argument("--out", default=None, help="run folders (default runs/ablation, runs/ablation-tiny with --tiny)")
    ap.add_argument("--results", default=None, help="results JSON (default OUT/results.json); the table goes beside "
                                                     "it (.md) and to OUT/table.md")
    ap.add_argument("--resume", action="store_true", help="continue existing results: skip finished runs")
    ap.add_argument("--text-table", default=None, help="precomputed caption embeddings (`python -m pfp_app captions`)")
    ap.add_argument("--workers", type=int, default=None, help="clip-rendering processes (default: CPUs - 2, max 14)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--num-clips", type=int, default=None)
    ap.add_argument("--eval-clips", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--in-process", action="store_true", help="run the trainer in this process")
    return ap.parse_args(argv)


def scale_of(args) -> str:
    return "tiny" if args.tiny else args.scale


def settings_from_args(args, settings_cls=None, scales=None, extra: tuple[str, ...] = ()):
    """Settings of the chosen scale with the command line's overrides (`extra`: the caller's own fields)."""
    s = (settings_cls or Settings)(**(scales or SCALES)[scale_of(args)])
    for name in ("steps", "base_steps", "batch_size", "num_clips", "eval_clips", "text_table", "latent_cache",
                 "base_dir", "data", "eval_data") + extra:
        if getattr(args, name, None) is not None:
            setattr(s, name, getattr(args, name))
    if args.workers is not None:
        s.workers = args.workers
    elif not s.tiny:
        s.workers = max(0, min(14, (os.cpu_count() or 2) - 2))
    s.in_process = s.in_process or args.in_process
    check_sources(s)
    return s


def default_out(args, name: str) -> Path:
    return Path(args.out or {"gpu": f"runs/{name}", "cpu": f"runs/{name}-cpu", "tiny": f"runs/{name}-tiny"}[scale_of(args)])


def main(argv=None) -> int:
    args = parse_args(argv)
    t_call = time.time()
    deadline = t_call + args.budget_min * 60
    s = settings_from_args(args)
    out = default_out(args, "ablation")
    s.latent_cache = s.latent_cache or str(out / "latents")
    results_path = Path(args.results) if args.results else out / "results.json"
    runs = plan_runs(args.variants.split(","), args.rates.split(","), [int(x) for x in args.seeds.split(",")],
                     base=s.base_steps > 0)
    for r in runs:
        if not r.is_base and (r.variant not in VARIANTS or r.rate not in RATES):
            raise SystemExit(f"unknown variant/rate {r.variant}/{r.rate}")
    if args.report:  # the table of an existing results file, whatever its protocol
        print(write_tables(json.loads(results_path.read_text()), results_path, out))
        return 0
    results = load_results(results_path, "retrieval_ablation", s.protocol(), args.resume or args.plan,
                           Settings().protocol())

    if args.plan:
        print_plan(runs, results, s, out, args.budget_min)
        return 0

    device = default_device() if args.device == "auto" else args.device
    call = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name() if device == "cuda" else "cpu", "budget_min": args.budget_min,
            "argv": sys.argv[1:] if argv is None else list(argv), "trained": [], "evaluated": []}
    results["calls"].append(call)

    def checkpoint() -> None:  # the results file is rewritten after every step of work (a killed call keeps it)
        call["wall_s"] = round(time.time() - t_call, 1)
        save_json(results_path, results)

    def eval_reserve() -> float:  # seconds to keep for evaluating a run: the slowest one so far, else a guess
        measured = [x["eval"]["seconds"] for x in results["runs"].values() if "eval" in x]
        return max(measured or [GUESS_EVAL_S * (0.2 if s.tiny else 1.0)])

    def evaluate_pending():
        for r in runs:
            rec = results["runs"].get(r.id)
            run_dir = out / "runs" / r.id
            if rec is None or r.is_base or "eval" in rec or not rec.get("trained"):
                continue
            if not (run_dir / "model").exists():
                print(f"  {r.id}: trained but its folder is gone (another machine?); it will be retrained", flush=True)
                rec["trained"] = False
                continue
            if time.time() + eval_reserve() > deadline:
                print(f"  {r.id}: no time left to evaluate; next call", flush=True)
                continue
            print(f"  evaluating {r.id} ...", flush=True)
            rec["eval"] = evaluate_recall_per_clip(run_dir / "model", s, device)
            call["evaluated"].append(r.id)
            checkpoint()

    evaluate_pending()
    for r in runs:
        rec = results["runs"].setdefault(r.id, {"variant": r.variant, "rate": r.rate, "seed": r.seed})
        if r.is_base and all(results["runs"].get(x.id, {}).get("trained") for x in runs
                             if x.seed == r.seed and not x.is_base):
            continue  # every run of the seed is trained: its G is needed no more
        if r.is_base and rec.get("trained") and not is_trained(base_run_dir(s, out, r.seed), s.base_steps):
            # trained on another machine: its G is not here. Retrained, it may differ from the first by GPU
            # nondeterminism, which the runs of the seed trained from the first one do not share
            rec["trained"] = False
        if rec.get("trained"):
            continue
        run_dir = base_run_dir(s, out, r.seed) if r.is_base else out / "runs" / r.id
        steps = s.base_steps if r.is_base else s.steps
        if r.is_base and is_trained(run_dir, steps):  # here already (e.g. trained by consistency.py)
            rec["train"], rec["trained"] = dict(train_state(run_dir), wall_s_this_call=0.0), True
            checkpoint()
            continue
        if not r.is_base and s.base_steps and not results["runs"].get(f"base_s{r.seed}", {}).get("trained"):
            print(f"  {r.id}: waits for base_s{r.seed}", flush=True)
            continue
        st = train_state(run_dir)
        steps_left = steps - (st["step"] if st else 0)
        est = estimate_train_s(timing_records(results), r.rate, s.batch_size, steps_left)
        left = deadline - time.time() - eval_reserve()
        if left < (5 if s.tiny else 60):
            print(f"  {r.id}: {left:.0f} s left in this call; stopping", flush=True)
            break
        if est > left and not s.tiny and est < args.budget_min * 60 - eval_reserve():
            print(f"  {r.id}: needs ~{est / 60:.1f} min, {left / 60:.1f} left: next call (a run is not split "
                  "when it fits one call)", flush=True)
            continue
        t0 = time.time()
        init = run_init_folder(out, s, r, f"ablation-{r.id}")
        print(f"  training {r.id}: {steps_left} steps left (~{est / 60:.1f} min; {left / 60:.1f} min left)", flush=True)
        st = run_training(init, run_dir, BASE if r.is_base else "pretrain", s, r.seed, max(left / 60, 0.1), steps)
        rec["train"] = {k: st.get(k) for k in ("step", "samples", "elapsed_s", "samples_per_s", "final_loss",
                                              "first_loss")} if st else {}
        rec["train"]["wall_s_this_call"] = round(time.time() - t0, 1)
        rec["trained"] = is_trained(run_dir, steps)
        call["trained"].append(r.id)
        checkpoint()
        if rec["trained"]:
            evaluate_pending()
    evaluate_pending()
    checkpoint()
    table = write_tables(results, results_path, out)
    print(table)
    left_runs = [r.id for r in runs if not r.is_base and "eval" not in results["runs"].get(r.id, {})]
    evaluable = [r for r in runs if not r.is_base]
    print(f"{len(evaluable) - len(left_runs)}/{len(evaluable)} runs evaluated in {results_path}"
          + (f"; still to do: {', '.join(left_runs)} (rerun with --resume)" if left_runs else "; all done"))
    return 0


def calls_summary(calls: list[dict]) -> str:
    """The device, wall time and dates line under both benchmarks' tables."""
    devices = sorted({c.get("device", "?") for c in calls})
    dates = sorted({c.get("date", "?")[:10] for c in calls})
    return (f"Device: {', '.join(devices) or '(none yet)'} · wall time: {calls_wall_min(calls):.1f} min over "
            f"{len(calls)} process call(s) · dates: {', '.join(dates) or '-'}")


def calls_wall_min(calls: list[dict]) -> float:
    """Minutes during which at least one call ran: calls side by side on one GPU (benchmarks/parallel_gpu.sh)
    overlap, and a plain sum would count their shared minutes once per process."""
    spans = sorted((t, t + c.get("wall_s", 0)) for c in calls
                   for t in [datetime.datetime.fromisoformat(c["date"]).timestamp()] if c.get("date"))
    total, end = 0.0, float("-inf")
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total / 60


def write_tables(results: dict, results_path: Path, out: Path, formatter=None) -> str:
    """Write the markdown table beside the results file and into OUT (consistency.py passes its own formatter)."""
    table = (formatter or format_table)(results)
    for path in {results_path.with_suffix(".md"), out / "table.md"}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
    return table


def print_plan(runs: list[Run], results: dict, s: Settings, out: Path, budget_min: float) -> None:
    bases = sum(r.is_base for r in runs)
    print(f"{len(runs) - bases} runs: stage 1 for {s.steps} steps x batch {s.batch_size} each"
          + (f", after {bases} memory-free G run(s) of {s.base_steps} steps" if bases else "")
          + " (time estimates: from measured runs where there are some, else H100 guesses)")
    print("| run | variant | rate | seed | state | est. min |\n|---|---|---|---|---|---|")
    total = 0.0
    for r in runs:
        rec = results["runs"].get(r.id, {})
        st = train_state(base_run_dir(s, out, r.seed) if r.is_base else out / "runs" / r.id)
        done, steps = (st["step"] if st else 0), (s.base_steps if r.is_base else s.steps)
        state = "evaluated" if "eval" in rec else "trained" if rec.get("trained") else f"step {done}/{steps}"
        finished = "eval" in rec or (r.is_base and rec.get("trained"))
        est = 0.0 if finished else (0.0 if r.is_base else GUESS_EVAL_S) + (0.0 if rec.get("trained") else
                                                                           estimate_train_s(timing_records(results), r.rate, s.batch_size, steps - done))
        total += est
        print(f"| {r.id} | {r.variant} | {r.rate} | {r.seed} | {state} | {est / 60:.1f} |")
    calls = math.ceil(total / 60 / (budget_min - 1)) if total else 0
    print(f"\nleft: ~{total / 60:.0f} min ≈ {calls} call(s) of --budget-min {budget_min:g}")


if __name__ == "__main__":
    sys.exit(main())
