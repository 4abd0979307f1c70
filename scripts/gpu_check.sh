#!/usr/bin/env bash
# GPU check for a lent CUDA machine (device tool) or any CUDA node: quantize + transcribe the
# mini sets on CUDA for fp32, fp16, Quanto int8, bnb nf4 and HQQ 4-bit; prints WER/RTF/memory.
# Assets travel in the ignored folder gpu_assets/ (carry it):
#   gpu_assets/base/                  real Whisper base (../shared/tools/real_whisper.py base gpu_assets/base)
#   gpu_assets/mini/test-*.tar.gz     copies of ../shared/data/librispeech-mini archives
#   gpu_assets/wheels/*.whl           optional: pinned wheels missing on the machine (pip download)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G "gpu_assets/wheels/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site gpu_assets/wheels/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
$PY scripts/gpu_check.py --model gpu_assets/base --mini gpu_assets/mini --out "${OUT:-/tmp}/gpu_check" "$@"
