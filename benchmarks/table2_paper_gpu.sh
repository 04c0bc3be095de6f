#!/usr/bin/env bash
# Paper Table 2 as the paper runs it (`consistency.py --scale paper`): per seed a memory-free G is trained first,
# then "with" (stage 1 + stage 2) and "without" (stage 2 alone, the same steps) start from it. Two seeds in one
# device call on one GPU, four trainers side by side once the memory-free Gs exist:
#
#   group 0  seed 0: memory-free G, then the "with" arm; encodes the training clips for everyone
#   group 1  seed 1: memory-free G, then the "with" arm (once the clips are encoded)
#   group 2  seed 0: the "without" arm (once seed 0's memory-free G is trained)
#   group 3  seed 1: the "without" arm (once seed 1's memory-free G is trained)
#
#   bash benchmarks/table2_paper_gpu.sh     # on the device, carrying .whl and .carry/captions.safetensors
#
# Results: $OUT/table2_paper.tgz (parts, merged JSON and table, logs, nvidia-smi samples); here:
#   python benchmarks/merge_results.py benchmarks/results/consistency_paper.json part-*.json
#   python benchmarks/consistency.py --scale paper --report --results benchmarks/results/consistency_paper.json
# The carried tree must fit 64 MiB: only the shipped codec (assets/pfp-default/vae) is used.
set -u
# SCALE=tiny EXTRA="--base-steps 2" WHEELS=0 OUT=/tmp/o: the same flow on a CPU in a minute (a smoke test)
if [ "${WHEELS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
D=${DIR:-/tmp/t2p}; mkdir -p "$D/latents"
BUDGET=${BUDGET:-8.8}  # minutes for the groups; merging and packing follow
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$D/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 3 > "$D/smi.csv" 2>/dev/null &
smi=$!
C="benchmarks/consistency.py --scale ${SCALE:-paper} ${EXTRA:-} --text-table .carry/captions.safetensors --base-dir $D/base --latent-cache $D/latents --resume"
left() { python3 -c "print(round($BUDGET - ($(date +%s) - $t0) / 60, 2))"; }
group() {  # group I ARGS...: one consistency.py process with what is left of the budget
  local i=$1; shift
  echo "group $i at +$(( $(date +%s) - t0 )) s: $*"
  # a hard stop 40 s after the budget: a trainer or generation that overruns it must not take the packing's time
  timeout "$(python3 -c "print(max(1, int(($(left) * 60) + 40)))")" \
    python3 $C "$@" --budget-min "$(left)" --out "$D/runs-$i" --results "$D/part-$i.json" >"$D/part-$i.log" 2>&1
}
base_trained() {  # base_trained SEED: the seed's memory-free G has all its steps
  python3 - "$D/base/s$1" <<'EOF'
import json, sys
from pathlib import Path
from benchmarks import retrieval_ablation as ra
base = Path(sys.argv[1])  # its base_protocol.json holds the steps it trains for
steps = json.loads((base / "base_protocol.json").read_text())["base_steps"] if (base / "base_protocol.json").exists() else 0
raise SystemExit(0 if steps and ra.is_trained(base, steps) else 1)
EOF
}
pids=()
group 0 --seeds 0 --arms with_pretrain --workers 12 &
g0=$!; pids+=($g0)
until compgen -G "$D/latents/latents-*.safetensors" >/dev/null || ! kill -0 $g0 2>/dev/null; do sleep 3; done
group 1 --seeds 1 --arms with_pretrain --workers 2 &
pids+=($!)
for sd in 0 1; do
  (until base_trained $sd; do
     sleep 5
     if [ $(( $(date +%s) - t0 )) -gt $(python3 -c "print(int($BUDGET * 60))") ]; then exit 1; fi
   done
   group $((sd + 2)) --seeds $sd --arms without_pretrain --workers 2) &
  pids+=($!)
done
wait "${pids[@]}"  # the groups only: a bare `wait` also waits for the nvidia-smi sampler, which never ends
echo "all groups done after $(( $(date +%s) - t0 )) s"
kill $smi 2>/dev/null
for i in 0 1 2 3; do [ -f "$D/part-$i.log" ] && { echo "== part $i"; grep -v "Loading" "$D/part-$i.log" | tail -5; }; done
parts=$(ls "$D"/part-*.json 2>/dev/null)
if [ -n "$parts" ]; then
  python3 benchmarks/merge_results.py "$D/consistency_paper.json" $parts \
    && python3 benchmarks/consistency.py --scale "${SCALE:-paper}" --report --results "$D/consistency_paper.json" --out "$D/report" | tail -30
fi
(cd "$D" && tar czf "$OUT/table2_paper.tgz" part-* consistency_paper.* gpu.txt smi.csv \
   runs-*/s*/*/stage*/metrics.jsonl base/s*/metrics.jsonl 2>/dev/null)
ls -la "$OUT"
