#!/usr/bin/env bash
# Does stage 2 with more character returns teach G to read a returning character from φ? One device call (issue 13):
#   A: stage 2 from the shipped model with RETURNS=${RET:-0.7} of its shot-start batches bringing a character back
#   (or A="REPEATS=0.5 RFRAMES=1": half the shot-start batches repeat an earlier prompt and G gets the repeated
#   shot's first latent, as the app then gives it at a return; judge it by fidelity.py's drift and return_consistency.py)
#   B: the control, the same run with RETURNS=0 (same seed, data, batch, minutes)
# side by side on one GPU (B waits for A's latent caches, shared through a symlink, then gets A's deadline); then
# benchmarks/return_loss.py on the shipped model, A and B (48 held-out clips, paired, on this GPU).
#
#   on this machine: python -m pfp_app bank --out data/bank (then benchmarks/device_carry.py for data/bank-lite),
#     python -m pfp_app captions --pairs 200 --out .carry/captions.safetensors,
#     python benchmarks/return_loss.py --write-captions .carry/rl_captions.safetensors,
#     and swap assets/pfp-default/vae for the encoder-only stand-in (benchmarks/device_carry.py --encoder-only-vae):
#     no decoding is needed, and the call's tree must fit 64 MiB
#   device call: carry [".whl", ".carry/captions.safetensors", ".carry/rl_captions.safetensors", "data/bank-lite"]
#     bash benchmarks/returns_gpu.sh        # MIN=7.0 minutes of training by default; BATCH per run: 48 on an
#     80-GB card, 64 on an H200
# Brings back rl.tgz (rl_{v7,a,b}.{json,md}), logs.tgz and the two models (G and φ, no codec, 66 MB) as
# both.tar.part-* (7 files, 63 MiB: the limits are 8 files and 64 MiB).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
test -f assets/pfp-default/memory_encoder/config.json || { echo "no φ in assets/pfp-default"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/oa /tmp/ob /tmp/ra/latents /tmp/rb /tmp/rlout && ln -sfn /tmp/ra/latents /tmp/rb/latents
# v7 trained at batch 128 on an 80-GB H100 (192 ran out of memory): two runs side by side take 48 each there, 64 on an H200
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
B=${BATCH:-$([ "$MEM" -lt 100000 ] && echo 48 || echo 64)}
common="BANK=data/bank-lite BATCH=$B LR=${LR:-2e-4} DATA_SEED=10 WARMUP=30 RSHARE=0.5 STARTS=shots CUTS=0.5 RECENT=1 EVAL_TIMEOUT=0"
M=${MIN:-7.0}; t0=$(date +%s)
env $common RUNS=/tmp/ra ${A:-RETURNS=${RET:-0.7}} timeout $((${M%.*} * 60 + 90)) bash benchmarks/train_default_gpu.sh \
  finetune /tmp/oa assets/pfp-default "$M" > /tmp/oa/train.log 2>&1 &
pa=$!
# the trainer caches two latent files (the segment data and the retrieval data); B starts once both are there
while [ "$(ls /tmp/ra/latents/*.safetensors 2>/dev/null | wc -l)" -lt 2 ] && kill -0 $pa 2>/dev/null; do sleep 2; done
left=$(python3 -c "print(round($M - ($(date +%s) - $t0) / 60, 2))")
echo "control starts after $(( $(date +%s) - t0 )) s with $left min"
env $common RUNS=/tmp/rb RETURNS=0 timeout $((${M%.*} * 60 + 90)) bash benchmarks/train_default_gpu.sh \
  finetune /tmp/ob assets/pfp-default "$left" > /tmp/ob/train.log 2>&1 &
pb=$!
python3 benchmarks/return_loss.py --model assets/pfp-default --text-table .carry/rl_captions.safetensors \
  --latent-cache /tmp/rl --out /tmp/rlout/rl_v7.json > /tmp/rl_v7.log 2>&1  # beside the trainers: the baseline
sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait $pa; echo "A rc $?"; wait $pb; echo "B rc $?"
for r in a b; do
  grep -o '"step": [0-9]*' /tmp/o$r/metrics.jsonl | tail -1
  [ -d /tmp/o$r/model ] && python3 benchmarks/return_loss.py --model /tmp/o$r/model --text-table .carry/rl_captions.safetensors \
    --latent-cache /tmp/rl --out /tmp/rlout/rl_$r.json > /tmp/rl_$r.log 2>&1
  tail -6 /tmp/rlout/rl_$r.md 2>/dev/null
  (cd /tmp/o$r/model 2>/dev/null && rm -rf vae && tar cf /tmp/model_$r.tar .)
done
tail -6 /tmp/rlout/rl_v7.md
tar cf /tmp/both.tar -C /tmp $(cd /tmp && ls model_a.tar model_b.tar 2>/dev/null) && split -b 15M /tmp/both.tar "$OUT/both.tar.part-"
for r in a b; do tr '\r' '\n' < /tmp/o$r/train.log | grep -v "it/s\]$" | tail -40 > /tmp/o$r/log.txt; done
tar czf "$OUT/rl.tgz" -C /tmp/rlout .
tar czf "$OUT/logs.tgz" /tmp/oa/log.txt /tmp/ob/log.txt /tmp/oa/metrics.jsonl /tmp/ob/metrics.jsonl /tmp/oa/smi.csv /tmp/rl_*.log 2>/dev/null
ls -la "$OUT"
