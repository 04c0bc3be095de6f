#!/usr/bin/env bash
# Groups of one benchmark side by side on one GPU, in one device call.
#
#   benchmarks/parallel_gpu.sh BUDGET_MIN DIR "SCRIPT ARGS" ["SCRIPT ARGS" ...]
#
# SCRIPT is retrieval_ablation.py or consistency.py (both read the same training clips, so they share the
# latent cache).
#
# A G of the `default` config at batch 32 leaves an H100/H200 mostly idle, so a few trainers at once
# finish about that many runs in the time of one (the reason for this script: a device call is at most
# 10 minutes and a fresh machine keeps no run folders). Group 0 encodes the training clips into the shared
# latent cache DIR/latents; the others start once it is there (the trainer writes it atomically), with
# what is left of the budget. Group i trains into DIR/runs-i and writes DIR/part-i.json and
# DIR/part-i.log; merge the parts with benchmarks/merge_results.py, then `SCRIPT --report`.
set -u
if [ "$#" -lt 3 ]; then
  echo "usage: parallel_gpu.sh BUDGET_MIN DIR \"SCRIPT ARGS\" [\"SCRIPT ARGS\" ...]" >&2
  exit 2
fi
budget=$1 dir=$2
shift 2
max=${MAX_GROUPS:-6}
if [ "$#" -gt "$max" ]; then  # measured 2026-12-02: of 8 side by side on an H200, one ran out of GPU memory
  echo "parallel_gpu.sh: $# groups, at most $max side by side (8 ran out of GPU memory on an H200; MAX_GROUPS=N to change)" >&2
  exit 2
fi
mkdir -p "$dir/latents"
# the scripts import the packages benchmarks and pfp_app from the repository root (this folder's parent), also
# where they are not installed (requirements.txt installs both): a device call's Python, say
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
pids=()
i=0
for group in "$@"; do
  if [ "$i" -gt 0 ]; then  # wait (at most 4 minutes) for group 0's latent cache, unless group 0 has ended
    # (with nothing left to train, it never builds one)
    until compgen -G "$dir/latents/latents-*.safetensors" >/dev/null || ! kill -0 "${pids[0]}" 2>/dev/null \
        || [ $(( $(date +%s) - t0 )) -gt 240 ]; do
      sleep 3
    done
  fi
  left=$(python3 -c "print(round($budget - ($(date +%s) - $t0) / 60, 2))")
  echo "group $i at +$(( $(date +%s) - t0 )) s, budget $left min: $group"
  read -r script args <<<"$group"
  # shellcheck disable=SC2086  # a group is a list of arguments
  "${PYTHON:-python3}" "benchmarks/$script" $args --resume --budget-min "$left" --latent-cache "$dir/latents" \
    --out "$dir/runs-$i" --results "$dir/part-$i.json" >"$dir/part-$i.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
echo "all groups done after $(( $(date +%s) - t0 )) s (rc $rc)"
exit $rc
