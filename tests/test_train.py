"""The training commands' CPU path (issue 3): codec, stage 1, stage 2 with LoRA, resume, time budget,
gradient accumulation, caption table and fp16 export, on the `tiny` config and a handful of short clips."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pfp_app.app.cli import main
from pfp_app.model.bundle import build_random_model, load_model
from pfp_app.train.trainer import TrainConfig, train

from conftest import TEST_THREADS, report

REPO = Path(__file__).resolve().parent.parent
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": str(TEST_THREADS)}
# 4 procedural clips of 3 s (25 frames at 8 fps -> 7 latent frames), batch 2: a fixed, tiny training set
TINY_DATA = dict(init="tiny", num_clips=4, clip_seconds=3.0, batch_size=2, workers=0, warmup_steps=5, lr=1e-3,
                 log_every=10, checkpoint_every_min=60.0)
CLI_DATA = ["--init", "tiny", "--num-clips", "4", "--clip-seconds", "3", "--batch-size", "2", "--workers", "0",
            "--warmup-steps", "5", "--lr", "1e-3", "--log-every", "5"]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def saved_state(out: Path) -> dict:
    return json.loads((out / "state" / "state.json").read_text())


def optimizer_steps(out: Path) -> set[int]:
    """AdamW's per-parameter step counts in the saved optimizer state (all equal after a clean run)."""
    opt = torch.load(out / "state" / "optimizer.pt", weights_only=True)
    return {int(s["step"]) for s in opt["state"].values()}


def ema_updates(out: Path) -> int:
    return torch.load(out / "state" / "ema.pt", weights_only=True)["optimization_step"]


@pytest.fixture(scope="module")
def caption_table(tmp_path_factory):
    """`python -m pfp_app captions` (in-process): every one-character caption, 5 pairs and the presets."""
    path = tmp_path_factory.mktemp("captions") / "captions.safetensors"
    cwd = os.getcwd()
    os.chdir(REPO)  # the command reads presets/storyboards relative to the repository root
    try:
        assert main(["captions", "--out", str(path), "--pairs", "5"]) == 0
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, caption_table):
    """Stage 2 with LoRA rank 4 for 4 steps, resumed to 6, on the precomputed caption table (the GPU recipe's path)."""
    out = tmp_path_factory.mktemp("ft")
    cfg = TrainConfig(stage="finetune", out=str(out), max_steps=4, lora_rank=4, text_table=str(caption_table),
                      retrieval_share=0.3, **{**TINY_DATA, "log_every": 2})
    first = train(cfg)
    resumed = train(TrainConfig(**{**cfg.__dict__, "max_steps": 6, "resume": True}))
    return out, first, resumed


def test_codec_stage_writes_a_loadable_model_with_latent_statistics(tmp_path):
    out = tmp_path / "codec"
    state = train(TrainConfig(stage="codec", out=str(out), max_steps=4, codec_window=9,
                              **{**TINY_DATA, "log_every": 2}))
    assert state["step"] == 4 and math.isfinite(state["final_loss"])
    rec = metrics(out)
    assert [r["step"] for r in rec] == [2, 4] and all(r["kind"] == "codec" and "l1" in r for r in rec)
    model = load_model(out / "model")
    cfg = model.codec.vae.config
    assert len(cfg.latents_mean) == len(cfg.latents_std) == cfg.z_dim == 8
    # measured on the trained codec's latents, not the placeholders (0, 1) a random tiny VAE carries
    assert any(abs(m) > 1e-4 for m in cfg.latents_mean) and any(abs(s - 1) > 1e-3 for s in cfg.latents_std)
    assert all(s > 0 for s in cfg.latents_std)
    assert json.loads((out / "model" / "training.json").read_text())["config"]["stage"] == "codec"


def test_codec_with_a_frozen_encoder_trains_the_decoder_and_keeps_every_latent(tmp_path):
    """--codec-freeze-encoder: the decoder learns, the encoder and the latent statistics stay, so a clip encodes
    to the same latents and G and φ trained on them stay valid."""
    first = tmp_path / "a"
    train(TrainConfig(stage="codec", out=str(first), max_steps=2, codec_window=9, **TINY_DATA))
    out = tmp_path / "b"
    train(TrainConfig(stage="codec", out=str(out), max_steps=6, codec_window=9, codec_freeze_encoder=True,
                      **{**TINY_DATA, "init": str(first / "model")}))
    a, b = load_model(first / "model").codec, load_model(out / "model").codec
    sa, sb = a.vae.state_dict(), b.vae.state_dict()
    side = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    assert side and all(torch.equal(sa[k], sb[k]) for k in side)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("decoder."))
    assert a.vae.config.latents_mean == b.vae.config.latents_mean and a.vae.config.latents_std == b.vae.config.latents_std
    clip = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.encode(clip, sample=False), b.encode(clip, sample=False))
    # the same through --vae on a fresh G of a config (a device call that carries no G): the trained codec's
    # time taps must not be re-initialised as a fresh codec's are (that changed every latent once)
    via_vae = tmp_path / "d"
    train(TrainConfig(stage="codec", out=str(via_vae), max_steps=2, codec_window=9, codec_freeze_encoder=True,
                      vae=str(first / "model" / "vae"), **TINY_DATA))
    sd = load_model(via_vae / "model").codec.vae.state_dict()
    assert all(torch.equal(sa[k], sd[k]) for k in side)
    with pytest.raises(ValueError, match="--codec-freeze-encoder trains the codec's decoder alone"):
        train(TrainConfig(stage="finetune", out=str(tmp_path / "c"), codec_freeze_encoder=True, **TINY_DATA))


def test_cosine_schedule_warms_up_then_decays_to_its_floor_and_bad_names_are_refused():
    from pfp_app.train.common import COSINE_FLOOR, lr_at

    cfg = TrainConfig(stage="codec", lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    assert lr_at(0, cfg, 0.0) == pytest.approx(1e-4)  # warm-up: step 1 of 10
    assert lr_at(50, cfg, 0.0) == pytest.approx(1e-3)
    assert lr_at(50, cfg, 0.5) == pytest.approx(1e-3 * (COSINE_FLOOR + (1 - COSINE_FLOOR) / 2))
    assert lr_at(50, cfg, 1.0) == lr_at(50, cfg, 7.0) == pytest.approx(1e-3 * COSINE_FLOOR)
    rates = [lr_at(50, cfg, p / 10) for p in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    constant = TrainConfig(stage="codec", lr=1e-3, warmup_steps=10)
    assert lr_at(50, constant, 0.9) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="--lr-schedule must be one of constant, cosine, not 'linear'"):
        train(TrainConfig(stage="codec", out="unused", lr_schedule="linear", **TINY_DATA))


def test_codec_mse_loss_is_the_squared_error_and_a_cosine_run_logs_a_falling_rate(tmp_path):
    """--codec-loss mse trains for what PSNR measures: its loss is the squared error (plus the tiny KL term) of
    the same reconstruction that 'l1+mse' adds L1 to; a cosine run's logged learning rate falls step by step."""
    from pfp_app.train.codec_loop import CodecTrainingModule

    model = build_random_model("tiny")
    clip = torch.rand(2, 3, 9, 64, 64) * 2 - 1
    losses = {}
    for name in ("l1+mse", "mse"):
        torch.manual_seed(0)  # the same latent sample in both
        losses[name], parts = CodecTrainingModule(model.codec.vae, loss=name)(clip)
    kl = 1e-4 * parts["kl"]
    assert losses["mse"].item() == pytest.approx((parts["mse"] + kl).item(), rel=1e-5)
    assert losses["l1+mse"].item() == pytest.approx((parts["l1"] + parts["mse"] + kl).item(), rel=1e-5)
    for refused in (lambda: CodecTrainingModule(model.codec.vae, loss="l2"),  # and train refuses it before any data
                    lambda: train(TrainConfig(stage="codec", out=str(tmp_path / "l2"), codec_loss="l2", **TINY_DATA))):
        with pytest.raises(ValueError, match="--codec-loss must be one of l1\\+mse, mse, not 'l2'"):
            refused()
    assert not (tmp_path / "l2").exists()
    out = tmp_path / "cos"
    train(TrainConfig(stage="codec", out=str(out), max_steps=8, codec_window=9, codec_loss="mse", lr_schedule="cosine",
                      **{**TINY_DATA, "warmup_steps": 1, "log_every": 2}))
    rates = [r["lr"] for r in metrics(out)]
    assert len(rates) == 4 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.2 * 1e-3


def test_every_option_has_its_help_beside_it_and_parses_to_its_default():
    """`train`'s options are TrainConfig's fields, each with the help written beside it (common.option): none is
    missing, and the command line gives the dataclass's defaults and types."""
    import argparse
    import dataclasses

    from pfp_app.train.cli import add_train_parsers

    parser = argparse.ArgumentParser()
    add_train_parsers(parser.add_subparsers(dest="command"))
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train_parser._actions if a.option_strings and a.dest != "help"}
    fields = dataclasses.fields(TrainConfig)
    assert set(actions) == {f.name for f in fields}
    for f in fields:
        assert f.metadata["help"].strip(), f.name
        assert actions[f.name].help.startswith(f.metadata["help"].replace("%", "%%")), f.name
    args = parser.parse_args(["train", "--stage", "finetune", "--shift", "5", "--time-budget-min", "2"])
    assert (TrainConfig(**{f.name: getattr(args, f.name) for f in fields})
            == TrainConfig(stage="finetune", shift=5.0, time_budget_min=2.0))


def test_the_timestep_shift_is_an_option_recorded_with_the_run(tmp_path, monkeypatch):
    import pfp_app.train.memory_loop as memory_loop

    shifts, real = [], memory_loop.sample_train_t
    monkeypatch.setattr(memory_loop, "sample_train_t", lambda b, shift, gen: shifts.append(shift) or real(b, shift, gen))
    out = tmp_path / "shift"
    train(TrainConfig(stage="pretrain", out=str(out), max_steps=2, shift=1.5, **TINY_DATA))
    assert shifts == [1.5, 1.5]  # every batch's t
    assert json.loads((out / "model" / "training.json").read_text())["config"]["shift"] == 1.5
    assert TrainConfig().shift == 3.0  # what the trainer drew with before it was an option


def test_pretrain_loss_decreases(tmp_path):
    out = tmp_path / "pre"
    t0 = time.time()
    state = train(TrainConfig(stage="pretrain", out=str(out), max_steps=80, **TINY_DATA))
    seconds = time.time() - t0
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2  # means over steps 1-20 and 61-80
    report(f"train: tiny stage-1 loss {first:.3f} (steps 1-20) -> {last:.3f} (steps 61-80), "
           f"{state['samples_per_s']:.0f} samples/s, {seconds:.1f} s with setup")
    assert last < 0.7 * first, losses
    assert state["step"] == 80 and state["samples"] == 160 and state["world_size"] == 1
    load_model(out / "model")  # the EMA weights as a loadable model folder

    # resuming a finished run changes nothing (no re-save of the EMA export, losses kept)
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()}
    again = train(TrainConfig(stage="pretrain", out=str(out), max_steps=80, resume=True, **TINY_DATA))
    assert again["step"] == 80 and again["final_loss"] == state["final_loss"]
    assert {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()} == before


def test_cli_resume_continues_from_the_saved_step(tmp_path):
    """The real `python -m pfp_app train` twice: 10 steps, then --resume to 20."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pfp_app", "train", "--stage", "pretrain", "--out", str(out), *CLI_DATA]
    first = subprocess.run([*cmd, "--max-steps", "10"], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert saved_state(out)["step"] == 10 and optimizer_steps(out) == {10} and ema_updates(out) == 10
    second = subprocess.run([*cmd, "--max-steps", "20", "--resume"], cwd=REPO, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed" in second.stdout and "at step 10" in second.stdout
    state = saved_state(out)
    assert state["step"] == 20 and state["samples"] == 20 * 2
    assert optimizer_steps(out) == {20}  # the optimizer state was loaded, not restarted (that would give 10)
    assert ema_updates(out) == 20  # and so was the EMA
    rec = metrics(out)
    assert [r["step"] for r in rec] == [5, 10, 15, 20]  # the second run went on from step 10, not from 0
    assert [r["samples"] for r in rec] == [10, 20, 30, 40]
    assert all(math.isfinite(r["loss"]) for r in rec)
    printed = json.loads(second.stdout[second.stdout.index("{"):])  # the final state, printed by the command
    assert printed["step"] == 20


def test_finetune_lora_merges_into_a_plain_wan_transformer(finetuned):
    from diffusers import WanTransformer3DModel

    from pfp_app.model.bundle import build_random_model

    out, first, resumed = finetuned
    assert first["step"] == 4 and resumed["step"] == 6
    # 6 with the optimizer state resumed (2 if restarted); φ's parameters skip the steps whose batches
    # were first segments without a memory (no gradient), so theirs may be lower
    assert max(optimizer_steps(out)) == 6 and min(optimizer_steps(out)) > 2
    assert [r["step"] for r in metrics(out)] == [2, 4, 6]
    assert {r["kind"] for r in metrics(out)} <= {"retrieval", "next_segment"}
    plain = WanTransformer3DModel.from_pretrained(out / "model" / "transformer")
    init = build_random_model("tiny", seed=0).transformer.state_dict()
    sd = plain.state_dict()
    assert not [k for k in sd if "lora" in k or "base_layer" in k]
    assert set(sd) == set(init)
    changed = {k for k in sd if not torch.equal(sd[k], init[k])}
    # the LoRA targets (attention projections) moved; everything else in G stayed frozen
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed), changed
    assert any("to_q" in k for k in changed)
    model = load_model(out / "model")  # and the whole bundle loads as the app would
    assert model.transformer.config.num_layers == 2


def test_time_budget_stops_the_run(tmp_path):
    out = tmp_path / "budget"
    t0 = time.time()
    state = train(TrainConfig(stage="pretrain", out=str(out), max_steps=10**6, time_budget_min=0.1, **TINY_DATA))
    seconds = time.time() - t0
    assert state["step"] < 10**6 and seconds < 6 + 30
    assert saved_state(out)["step"] == state["step"]  # the final checkpoint was written
    assert (out / "model" / "pfp_model.json").exists()


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    out = tmp_path / "accum"
    state = train(TrainConfig(stage="pretrain", out=str(out), max_steps=3, grad_accum=2, **TINY_DATA))
    assert state["step"] == 3 and state["samples"] == 3 * 2 * 2 and state["grad_accum"] == 2
    assert optimizer_steps(out) == {3} and ema_updates(out) == 3  # one optimizer and EMA update per 2 micro-batches


def test_captions_table(caption_table):
    from pfp_app.data.world import all_captions
    from pfp_app.train.data import caption_table_from_file

    table = caption_table_from_file(str(caption_table))
    assert set(all_captions(max_characters=1)) <= set(table)
    emb = next(iter(table.values()))
    assert emb.shape == (32, 384) and torch.isfinite(emb).all()


def test_export_writes_fp16_shards(finetuned, tmp_path):
    out, _, _ = finetuned
    dest = tmp_path / "export"
    assert main(["export", "--model", str(out / "model"), "--out", str(dest)]) == 0
    files = sorted(dest.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"transformer", "memory_encoder", "vae"}
    for f in files:
        assert f.stat().st_size <= 15 * 10**6
        with safe_open(str(f), "pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float16}, f
    assert (dest / "training.json").exists()
    exported, original = load_model(dest), load_model(out / "model")
    a, b = exported.transformer.state_dict(), original.transformer.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-2, rtol=1e-2) for k in b)


def test_export_shards_large_parts(finetuned, tmp_path):
    """The shard limit is honoured when a part is larger than it (tiny parts fit one file at 15 MB)."""
    out, _, _ = finetuned
    dest = tmp_path / "sharded"
    assert main(["export", "--model", str(out / "model"), "--out", str(dest), "--max-shard-size", "50KB"]) == 0
    shards = sorted((dest / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and (dest / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    load_model(dest)


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_base_stage_trains_g_alone_and_leaves_phi_as_it_was(tmp_path):
    """Stage `base` (G without memory, the stand-in for a pretrained video model): G's denoising loss falls,
    φ is never touched, and no batch carried a memory."""
    from pfp_app.model.bundle import build_random_model

    out = tmp_path / "base"
    state = train(TrainConfig(stage="base", out=str(out), max_steps=60, **TINY_DATA))
    losses = [r["loss"] for r in metrics(out)]
    assert {r["kind"] for r in metrics(out)} == {"segment"}
    assert state["step"] == 60 and sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    init = build_random_model("tiny", seed=0)
    trained = load_model(out / "model")
    phi0, phi1 = _weights(init.memory_encoder), _weights(trained.memory_encoder)
    assert phi0.keys() == phi1.keys() and all(torch.equal(phi0[k], phi1[k]) for k in phi0)
    g0, g1 = _weights(init.transformer), _weights(trained.transformer)
    assert any(not torch.equal(g0[k], g1[k]) for k in g0)
    # the optimizer held G's parameters only
    n_g = sum(1 for p in init.transformer.parameters())
    assert len(torch.load(out / "state" / "optimizer.pt", weights_only=True)["state"]) == n_g


def test_latent_cache_is_read_back_and_trains_exactly_as_without_it(tmp_path, monkeypatch):
    import pfp_app.train.memory_loop as memory_loop

    cache = tmp_path / "cache"
    plain = train(TrainConfig(stage="pretrain", out=str(tmp_path / "plain"), max_steps=6, **TINY_DATA))
    first = train(TrainConfig(stage="pretrain", out=str(tmp_path / "a"), max_steps=6, latent_cache=str(cache),
                              **TINY_DATA))
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 1

    def no_rendering(*args, **kwargs):
        raise AssertionError("the clips were rendered again although the cache holds them")

    monkeypatch.setattr(memory_loop, "_load_training_clips", no_rendering)
    second = train(TrainConfig(stage="pretrain", out=str(tmp_path / "b"), max_steps=6, latent_cache=str(cache),
                               **TINY_DATA))
    assert plain["final_loss"] == first["final_loss"] == second["final_loss"]
    a = _weights(load_model(tmp_path / "plain" / "model").transformer)
    b = _weights(load_model(tmp_path / "b" / "model").transformer)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # other clips (another data seed) are another cache entry, never the stored one
    with pytest.raises(AssertionError, match="rendered again"):
        train(TrainConfig(stage="pretrain", out=str(tmp_path / "c"), max_steps=1, latent_cache=str(cache),
                          **{**TINY_DATA, "data_seed": 7}))
    monkeypatch.undo()
    files[0].write_bytes(b"not a safetensors file")  # a damaged entry is rebuilt, not trusted
    again = train(TrainConfig(stage="pretrain", out=str(tmp_path / "d"), max_steps=6, latent_cache=str(cache),
                              **TINY_DATA))
    assert again["final_loss"] == plain["final_loss"]


def test_loading_clips_in_process_keeps_the_training_threads():
    """Rendering without worker processes used to set torch to one thread for the rest of the run
    (training on a 2-core CPU at half speed)."""
    from pfp_app.train.data import clip_dataset, load_clips

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        load_clips(clip_dataset("world", 1, 2.0, 32, 8, 0), [0], workers=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
