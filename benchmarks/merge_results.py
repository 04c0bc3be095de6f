"""Merge results files of one benchmark measured side by side (benchmarks/parallel_gpu.sh) into one.

    python benchmarks/merge_results.py benchmarks/results/ablation.json part-0.json part-1.json ...

The first path is the target (created if missing). All files must hold the same benchmark and protocol:
results of different protocols are never mixed. A run found in several files keeps the most complete
record (evaluated over trained over started), calls are concatenated. Then rebuild the table with
`--report` of the benchmark script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks import retrieval_ablation as ra


def completeness(rec: dict) -> tuple:
    """Order records of one run: evaluated (Table 1) or more storyboards scored (Table 2) > trained > steps."""
    return (bool(rec.get("eval")), len(rec.get("storyboards", {})), bool(rec.get("trained")),
            rec.get("train", {}).get("step", 0))


def merge(target: dict | None, parts: list[dict]) -> dict:
    out = target or {"benchmark": parts[0]["benchmark"], "protocol": parts[0]["protocol"], "runs": {}, "calls": []}
    for p in parts:
        if p["benchmark"] != out["benchmark"]:
            raise SystemExit(f"cannot merge {p['benchmark']} results into {out['benchmark']} results")
        if p["protocol"] != out["protocol"]:
            raise SystemExit("results of different protocols are never mixed: "
                             f"{ra.protocol_diff(out['protocol'], p['protocol'])} (target, part)")
        for rid, rec in p["runs"].items():
            if rid not in out["runs"] or completeness(rec) > completeness(out["runs"][rid]):
                out["runs"][rid] = rec
        seen = {json.dumps(c, sort_keys=True) for c in out["calls"]}
        out["calls"] += [c for c in p["calls"] if json.dumps(c, sort_keys=True) not in seen]
    return out


def read_results(path: Path) -> dict:
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a readable results file ({e})") from None
    if not isinstance(res, dict) or not {"benchmark", "protocol", "runs", "calls"} <= res.keys():
        raise SystemExit(f"{path}: not a results file of retrieval_ablation.py or consistency.py")
    return res


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    target_path, part_paths = Path(argv[0]), [Path(a) for a in argv[1:]]
    target = read_results(target_path) if target_path.exists() else None
    merged = merge(target, [read_results(p) for p in part_paths])
    ra.save_json(target_path, merged)
    print(f"{target_path}: {len(merged['runs'])} runs, {len(merged['calls'])} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
