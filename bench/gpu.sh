#!/usr/bin/env bash
# Issue 14 §4: the GPU figures in one go, when a GPU is lent (< 8 minutes on one H100/H200).
#
#   bash bench/gpu.sh            # from the repository root, with the venv active
#
# Prints, each step under its own time limit (a step that runs over is cut and reported):
#   1. extraction frames/s, ViT-B/16 @224 bf16: pure forward vs the full pipeline (JPEG
#      folders -> cache), their ratio (target >= 0.85), and the video path's frames/s with
#      MTCNN detection on the GPU (bench/bench_extract.py);
#   2. the heads' epoch time at s-Aff-Wild2 size with the features on the device
#      (bench/bench_train.py; target <= 2 s);
#   3. search throughput, --jobs 4 vs 1 on the GPU (bench/bench_search.py; target >= 3x).
# No network is needed: random-init weights (pretrained=0), synthetic data.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
T0=$(date +%s)

if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: no CUDA device visible; nothing to measure"; exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
echo "CPUs: $(nproc)"

step() {  # step NAME LIMIT_S CMD...
    local name=$1 limit=$2; shift 2
    echo; echo "== $name (limit ${limit}s, at $(( $(date +%s) - T0 ))s)"
    local t=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    [ $rc -eq 0 ] || echo "!! $name: exit $rc$([ $rc -eq 124 ] && echo ' (ran past its limit)')"
    echo "-- $name: $(( $(date +%s) - t ))s"
}

step "1. extraction ViT-B/16 @224 bf16: pure forward vs pipeline; video path with GPU detection" 190 \
    $PY bench/bench_extract.py --backbone 'timm:vit_base_patch16_224?pretrained=0' --batch 256 --frames 6000 \
        --device cuda --precision bf16 --repeat 2 --video-frames 1500

step "2. heads epoch at s-Aff-Wild2 size, features on the device" 110 \
    $PY bench/bench_train.py --scales 1 --epochs 2 --vit-frames 32 --vit-iters 3

step "3. search throughput: --jobs 4 vs 1 on one GPU" 150 \
    $PY bench/bench_search.py --device cuda --jobs 1,4 --configs 8 --epochs 4 --videos 60 --frames 500 --dim 768

echo; echo "gpu.sh: done in $(( $(date +%s) - T0 ))s"
