#!/usr/bin/env bash
# Returns, measured side by side on one GPU in one device call: the drift storyboards, prompt fidelity and return
# consistency of the model under several sampler settings (each a list of `--sampler FIELD=VALUE`).
#
#   benchmarks/returns_eval_gpu.sh OUT MODEL BUDGET_MIN 'NAME:FIELD=VALUE,...' ['NAME:...' ...]
#
# Per variant: fidelity.py's 60-s drift storyboard for seeds 50000-50002 (a return every 12 s; DRIFT=0 skips them),
# fidelity.py's 32 held-out storyboards (FID=0 skips them) and return_consistency.py's 16 storyboards (RC=0 skips
# them). The caption
# tables come from a machine with MiniLM (a GPU machine has none):
#   python benchmarks/fidelity.py --num-storyboards 32 --drift-seconds 60 --seed 50000 --write-captions .carry/fid_50000.safetensors
#   python benchmarks/fidelity.py --num-storyboards 0 --drift-seconds 60 --seed 5000N --write-captions .carry/fid_5000N.safetensors
#   python benchmarks/return_consistency.py --storyboards 16 --write-captions .carry/rc.safetensors
# The G of the default model leaves the GPU mostly idle, so JOBS runs go side by side (default 6); every run
# writes its JSON after each storyboard, so a run cut by BUDGET_MIN keeps what it measured. nvidia-smi is
# sampled every 2 s into OUT/smi.csv.
set -u
out=$1 model=$2 budget=$3
shift 3
mkdir -p "$out"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 >"$out/smi.csv" 2>/dev/null &
smi=$!
cmds=()
for v in "$@"; do
  name=${v%%:*} fields=${v#*:}
  sampler=""
  IFS=, read -ra kv <<<"$fields"
  for f in "${kv[@]}"; do [ -n "$f" ] && sampler="$sampler --sampler $f"; done
  if [ "${FID:-1}" = 1 ]; then
    cmds+=("python3 benchmarks/fidelity.py --model $model --num-storyboards 32 --drift-seconds 60 --seed 50000 --text-table .carry/fid_50000.safetensors$sampler --out $out/fid_$name.json")
  elif [ "${DRIFT:-1}" = 1 ]; then
    cmds+=("python3 benchmarks/fidelity.py --model $model --num-storyboards 0 --drift-seconds 60 --seed 50000 --text-table .carry/fid_50000.safetensors$sampler --out $out/drift_${name}_50000.json")
  fi
  if [ "${DRIFT:-1}" = 1 ]; then
    for s in 50001 50002; do
      cmds+=("python3 benchmarks/fidelity.py --model $model --num-storyboards 0 --drift-seconds 60 --seed $s --text-table .carry/fid_$s.safetensors$sampler --out $out/drift_${name}_$s.json")
    done
  fi
  if [ "${RC:-1}" = 1 ]; then
    cmds+=("python3 benchmarks/return_consistency.py --model $model --storyboards 16 --text-table .carry/rc.safetensors$sampler --out $out/rc_$name.json")
  fi
done
printf '%s\n' "${cmds[@]}" >"$out/commands.txt"
printf '%s\n' "${cmds[@]}" | timeout "$(python3 -c "print(int($budget * 60))")" \
  xargs -P "${JOBS:-6}" -I{} sh -c '{} >>"$0/runs.log" 2>&1' "$out"
echo "rc $? after the runs"
kill "$smi" 2>/dev/null
exit 0
