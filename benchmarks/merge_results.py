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


def completeness(rec: dict) -> tuple:
    """Order records of one run: evaluated (Table 1) or scored storyboards (Table 2) > trained > started."""
    return (bool(rec.get("eval")) or bool(rec.get("scores")), len(rec.get("storyboards", {})),
            bool(rec.get("trained")), rec.get("train", {}).get("step", 0) if isinstance(rec.get("train"), dict) else 0)


def merge(target: dict | None, parts: list[dict]) -> dict:
    out = target or {"benchmark": parts[0]["benchmark"], "protocol": parts[0]["protocol"], "runs": {}, "calls": []}
    for p in parts:
        if p["benchmark"] != out["benchmark"]:
            raise SystemExit(f"cannot merge {p['benchmark']} results into {out['benchmark']} results")
        if p["protocol"] != out["protocol"]:
            diff = {k: (out["protocol"].get(k), p["protocol"].get(k)) for k in {**out["protocol"], **p["protocol"]}
                    if out["protocol"].get(k) != p["protocol"].get(k)}
            raise SystemExit(f"results of different protocols are never mixed: {diff} (target, part)")
        for rid, rec in p["runs"].items():
            if rid not in out["runs"] or completeness(rec) > completeness(out["runs"][rid]):
                out["runs"][rid] = rec
        seen = {json.dumps(c, sort_keys=True) for c in out["calls"]}
        out["calls"] += [c for c in p["calls"] if json.dumps(c, sort_keys=True) not in seen]
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    target_path, part_paths = Path(argv[0]), [Path(a) for a in argv[1:]]
    target = json.loads(target_path.read_text()) if target_path.exists() else None
    merged = merge(target, [json.loads(p.read_text()) for p in part_paths])
    tmp = target_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
    tmp.replace(target_path)
    print(f"{target_path}: {len(merged['runs'])} runs, {len(merged['calls'])} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
