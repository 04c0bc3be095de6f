#!/usr/bin/env bash
# One device call of the paper-evidence benchmarks on one GPU: every run of one seed side by side.
#
#   benchmarks/paper_evidence_gpu.sh SEED BUDGET_MIN DIR [table1] [table2]   (default table1; both together
#   are 8 processes, more than parallel_gpu.sh lets share one GPU)
#
# Table 1: the six φ runs of SEED (4 variants at 4×4×2, Proposed at 2×2×2 and 2×2×1), one process each.
# Table 2: the two arms of SEED (with / without stage-1 pretraining), one process each.
# EXTRA: more arguments for every group (EXTRA=--tiny: the CPU smoke test of this script).
# Results: DIR/part-*.json (merge into benchmarks/results/ with benchmarks/merge_results.py).
set -u
if [ "$#" -lt 3 ]; then
  echo "usage: paper_evidence_gpu.sh SEED BUDGET_MIN DIR [table1] [table2]" >&2
  exit 2
fi
seed=$1 budget=$2 dir=$3
shift 3
tables=${*:-table1}
T=.carry/captions.safetensors
groups=()
if [[ $tables == *table2* ]]; then  # the longest runs (1600 steps each) start first
  for arm in with_pretrain without_pretrain; do
    groups+=("consistency.py --seeds $seed --arms $arm --text-table $T --workers 2 ${EXTRA:-}")
  done
fi
if [[ $tables == *table1* ]]; then
  for vr in large_patchifier:4x4x2 only_lr:4x4x2 without_lr:4x4x2 proposed:4x4x2 proposed:2x2x2 proposed:2x2x1; do
    groups+=("retrieval_ablation.py --seeds $seed --variants ${vr%%:*} --rates ${vr##*:} --text-table $T --workers 2 ${EXTRA:-}")
  done
fi
groups[0]="${groups[0]/--workers 2/--workers 12}"  # group 0 renders and encodes the training clips for all
exec "$(dirname "$0")/parallel_gpu.sh" "$budget" "$dir" "${groups[@]}"
