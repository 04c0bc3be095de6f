"""The GPU benchmark runs end to end on the CPU with tiny shapes and writes every row of its tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny", "--out", str(out),
                           "--budget-s", "50"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["errors"] == [], res["errors"]
    assert res["meta"]["total_s"] < 60

    steps = res["steps"]["tiny"]
    for row in ("segment", "4x4x2", "2x2x2", "2x2x1", "full", "shared_t_4x4x2"):
        assert steps[row]["median_s"] > 0, row
    assert steps["segment"]["memory_tokens"] == 0 and steps["full"]["memory_tokens"] > steps["2x2x1"]["memory_tokens"]

    for rate in ("4x4x2", "2x2x2", "2x2x1"):
        phi = res["phi"]["tiny"][rate]
        assert phi["encode_20s"]["median_s"] > 0 and phi["add_segment"]["median_s"] > 0
        assert phi["incremental_vs_full_rel_err"] < 1e-5  # the incremental memory is exact

    profiles = res["profiles"]["tiny"]
    assert set(profiles) == {"resident", "offload+fp8", "fp8", "offload", "lowvram", "cpu"}
    for name, rec in profiles.items():
        assert rec["step_s"] > 0 and rec["output_finite"], name
        assert rec["check_vs_resident"] == "reference" or rec["check_vs_resident"] < (0.05 if "fp8" in name else 1e-5)

    md = (tmp_path / "bench.md").read_text()
    assert md.strip() in proc.stdout  # printed last, and written beside the JSON
    for label in ("segment alone", "+ φ memory 4x4x2", "+ φ memory 2x2x2", "+ φ memory 2x2x1",
                  "+ full 20 s history, uncompressed", "one shared timestep", "**(b) φ", "**(c) Whole pipeline",
                  "**Targets (issue 5)**"):
        assert label in md, label
    for name in profiles:
        assert f"| tiny | {name} |" in md
