"""Issue 7 on the CPU: the same Accelerate training code on 2 ranks (torchrun over gloo), then resumed on 1.

`accelerate launch --num_processes 2` starts only one process on a machine without GPUs, so the two ranks
come from torchrun; `Accelerator(cpu=True)` joins them over gloo (DistributedType.MULTI_CPU).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import report

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
BATCH = 2
ARGS = ["train", "--stage", "pretrain", "--init", "tiny", "--num-clips", "4", "--clip-seconds", "3",
        "--batch-size", str(BATCH), "--workers", "0", "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "3"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _final_state(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{\n"):])


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_two_ranks_then_resume_on_one(tmp_path):
    out = tmp_path / "run"
    two = _run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pfp_app", *ARGS,
                "--out", str(out), "--max-steps", "6"])
    # both ranks joined one process group: world size 2, each rank on its half of the clips
    assert two.stdout.count("2 process(es) x batch 2") == 1  # printed by the main process only
    assert "2 clips on this rank" in two.stdout
    state2 = _final_state(two.stdout)
    assert state2["world_size"] == 2 and state2["step"] == 6 and state2["samples"] == 6 * BATCH * 2
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"], r["samples"]) for r in rec] == [(3, 2, 12), (6, 2, 24)]  # one writer

    # one set of checkpoint files, written by the main process alone
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files.count("state/optimizer.pt") == 1 and files.count("state/state.json") == 1
    assert not [f for f in files if "rank" in f or f.endswith((".tmp", ".1"))], files
    assert {p.name for p in (out / "state").iterdir()} == {"transformer", "memory_encoder", "vae", "optimizer.pt",
                                                           "ema.pt", "state.json"}
    saved = json.loads((out / "state" / "state.json").read_text())
    assert saved["step"] == 6 and "world_size" not in saved  # nothing in the state depends on the world size

    # the 2-rank checkpoint resumed by one process
    one = _run([sys.executable, "-m", "pfp_app", *ARGS, "--out", str(out), "--max-steps", "9", "--resume"])
    assert "at step 6" in one.stdout
    state1 = _final_state(one.stdout)
    assert state1["world_size"] == 1 and state1["step"] == 9 and state1["samples"] == 6 * BATCH * 2 + 3 * BATCH
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in rec] == [(3, 2), (6, 2), (9, 1)]
    assert all(math.isfinite(r["loss"]) for r in rec)
    opt = torch.load(out / "state" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in opt["state"].values()} == {9}  # AdamW moments carried over from the 2-rank run
    assert torch.load(out / "state" / "ema.pt", weights_only=True)["optimization_step"] == 9
    report(f"train: 2 ranks (torchrun, gloo) {state2['samples_per_s']:.1f} samples/s -> resumed on 1 rank "
           f"{state1['samples_per_s']:.1f} samples/s (CPU, correctness check only)")
