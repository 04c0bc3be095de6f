#!/usr/bin/env bash
# Table 2 at GPU scale with the shipped model's G (issue 13): 2 seeds x 2 arms side by side on one GPU, in one
# device call; parts, logs and nvidia-smi samples come back as $OUT/parts.tgz (merge as in benchmarks/README.md).
#
#   P=400 bash benchmarks/table2_gpu.sh          # on the device, carrying .whl and .carry/captions.safetensors
#   ARM=with_pretrain bash benchmarks/table2_gpu.sh   # one arm, both seeds (merge with the other arm's parts)
#   ARM=with_pretrain SEEDS=0 bash benchmarks/table2_gpu.sh   # one arm, one seed
#
# The call's working tree must fit 64 MiB: leave assets/pfp-default/memory_encoder, benchmarks/results and
# docs/screenshot.png behind (move them aside before the call; both arms get a fresh φ, so the shipped φ is unused).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
D=${DIR:-/tmp/t2}; mkdir -p "$D"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$D/gpu.txt"
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
# four trainers side by side on an 80-GB card need checkpointing (on the H200 they peaked at 112 GB without it, at
# 9.6 GB with it on an H100); two (ARM=...) fit without it (~28 GB each)
GC=""; [ "$MEM" -lt 100000 ] && [ -z "${ARM:-}" ] && GC="--gradient-checkpointing"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 3 > "$D/smi.csv" 2>/dev/null &
C="consistency.py --g-from assets/pfp-default --pretrain-steps ${P:-400} --finetune-steps ${P:-400} --gen-steps 8 --recent-latents 1 --text-table .carry/captions.safetensors $GC"
if [ -n "${ARM:-}" ]; then  # ARM=with_pretrain: that arm alone, both seeds (the other arm's parts came from an
  # earlier call: on an H100, with gradient checkpointing, the four groups of one call finished only the arms without
  # stage 1, 2026-12-05; stage 1's retrieval batches ran at 46-57 samples/s beside the others' 76)
  groups=(); w=8  # SEEDS="0": one seed alone (when less device time is left than two need)
  for sd in ${SEEDS:-0 1}; do groups+=("$C --seeds $sd --arms $ARM --workers $w"); w=2; done
else
  groups=("$C --seeds 0 --arms with_pretrain --workers 8" "$C --seeds 0 --arms without_pretrain --workers 2"
          "$C --seeds 1 --arms with_pretrain --workers 2" "$C --seeds 1 --arms without_pretrain --workers 2")
fi
timeout "${TL:-555}" benchmarks/parallel_gpu.sh "${BUDGET:-9.0}" "$D" "${groups[@]}" 2>&1 | tee "$D/table2.log"
kill %1 2>/dev/null
for i in 0 1 2 3; do [ -f "$D/part-$i.log" ] && tail -4 "$D/part-$i.log"; done
(cd "$D" && tar czf "$OUT/parts.tgz" part-* smi.csv gpu.txt table2.log runs-*/s*/*/stage*/metrics.jsonl 2>/dev/null)
ls -la "$OUT"
