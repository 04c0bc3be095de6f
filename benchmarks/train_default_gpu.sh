#!/usr/bin/env bash
# How the embedded default model (assets/pfp-default) is trained: one GPU, resumable phases that each
# fit a 10-minute window. Each phase starts from the previous phase's exported model folder.
#   phase 1: codec (small AutoencoderKLWan) then stage-1 retrieval pretraining of G + φ
#            (as run: the codec in one call, stage 1 in the next, reusing runs/codec on the warm machine)
#   phase 2: more stage 1, then stage 2 (next-segment fine-tuning, 30% retrieval batches kept)
#   phase 3: stage 2 from the phase-1 model, then held-out evaluation (what shipped: phase 2 was skipped)
# Usage: bash benchmarks/train_default_gpu.sh PHASE OUTDIR [INIT_MODEL]
# Caption embeddings come from `python -m pfp_app captions --out .carry/captions.safetensors` (CPU).
set -euo pipefail
phase=$1; out=$2; init=${3:-assets/pfp-default}
captions=.carry/captions.safetensors
common=(--workers 14 --text-table "$captions" --num-clips 1536 --batch-size 32 --lr 3e-4 --warmup-steps 200 --log-every 50)
mkdir -p "$out"
case "$phase" in
  1)
    python3 -m pfp_app train --stage codec --init default --out runs/codec --num-clips 384 --batch-size 16 \
      --lr 4e-4 --warmup-steps 100 --codec-window 17 --time-budget-min 5 --workers 14 --log-every 50 --data-seed 1
    python3 -m pfp_app train --stage pretrain --init runs/codec/model --out runs/pre "${common[@]}" \
      --data-seed 2 --time-budget-min 6.3 --checkpoint-every-min 2
    final=runs/pre/model ;;
  2)
    python3 -m pfp_app train --stage pretrain --init "$init" --out runs/pre2 "${common[@]}" --data-seed 3 --time-budget-min 3
    python3 -m pfp_app train --stage finetune --init runs/pre2/model --out runs/ft "${common[@]}" --data-seed 4 \
      --retrieval-share 0.3 --time-budget-min 4.5
    final=runs/ft/model ;;
  3)
    python3 -m pfp_app train --stage finetune --init "$init" --out runs/ft2 "${common[@]}" --data-seed 5 \
      --retrieval-share 0.3 --time-budget-min 6.5 --checkpoint-every-min 2
    final=runs/ft2/model ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac
python3 -m pfp_app export --model "$final" --out "$out/model"
cat runs/*/metrics.jsonl > "$out/metrics.jsonl" || true
timeout "${EVAL_TIMEOUT:-75}" python3 -m pfp_app evaluate --model "$out/model" --num-clips 8 --out "$out/eval.json" || echo "evaluation skipped (time)"
