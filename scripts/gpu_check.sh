#!/usr/bin/env bash
# GPU check, in one go, for a developer with a CUDA GPU (or the project's lent one):
#   1. the test suite with CUDA as the default device (device-sensitive tests then train on the GPU);
#   2. lightft compare with every registered method on CUDA, at fp32 and at bf16 (tiny-bert: it ships with the package);
#   3. bench/scale.py (full fine-tuning vs LoRA, fp32 / bf16 / fp16, CPU and CUDA).
# It prints one summary at the end and exits non-zero if any part failed.
#   bash scripts/gpu_check.sh [PYTHON]      # PYTHON defaults to .venv/bin/python, else python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
OUT="${GPU_CHECK_OUT:-build/gpu-check}"; mkdir -p "$OUT"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { echo "gpu_check: no CUDA device visible to $PY"; exit 2; }
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'

declare -A STATUS
LIGHTFT_DEVICE=cuda "$PY" -m pytest -q tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -5
STATUS[pytest]=${PIPESTATUS[0]}

METHODS=$("$PY" -c 'from lightft.methods import load_plugins; print(",".join(n if n != "top-k" else "top2" for n in load_plugins()))')
for precision in fp32 bf16; do
  "$PY" -m lightft compare --model tiny-bert --methods "$METHODS" --device cuda --precision "$precision" --epochs 1 \
      --max-length 64 --out "$OUT/compare-$precision" 2>&1 | tee "$OUT/compare-$precision.log" | tail -14
  STATUS[compare-$precision]=${PIPESTATUS[0]}
done

"$PY" bench/scale.py --json "$OUT/scale.json" 2>&1 | tee "$OUT/scale.log" | tail -16
STATUS[bench-scale]=${PIPESTATUS[0]}

echo; echo "gpu_check summary (logs in $OUT):"
failed=0
for part in pytest compare-fp32 compare-bf16 bench-scale; do
  if [ "${STATUS[$part]}" = 0 ]; then echo "  ok      $part"; else echo "  FAILED  $part (exit ${STATUS[$part]})"; failed=$((failed+1)); fi
done
echo "  $(grep -Eo '[0-9]+ passed[^=]*' "$OUT/pytest.log" | tail -1)"
exit $failed
