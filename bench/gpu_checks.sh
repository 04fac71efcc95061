#!/usr/bin/env bash
# GPU checks in one go: the CUDA tests (same maths as on the CPU; pretrain -> finetune -> evaluate with
# device=cuda), then SAC update throughput on the GPU (eager, without the non-finite guard, compiled) and the
# same updates on one CPU thread of the same machine, every ratio measured in one process.
#   bash bench/gpu_checks.sh [results-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${1:-runs/gpu_checks}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
nvidia-smi -L
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$RES/device.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$RES/test_cuda.txt"
python bench/update_throughput.py --device cuda --steps 1 4 10 --batch 256 1024 --repeats 50 \
  --modes eager eager_noguard 2>&1 | tee "$RES/throughput_cuda.txt"
python bench/update_throughput.py --device cpu --threads 1 --steps 4 --batch 1024 --repeats 10 \
  2>&1 | tee "$RES/throughput_cpu_same_machine.txt"
timeout 200 python bench/update_throughput.py --device cuda --steps 4 --batch 1024 --repeats 100 \
  --modes eager compiled_noguard 2>&1 | grep -v '^W1' | tee "$RES/throughput_compiled.txt"
timeout 100 python bench/update_throughput.py --device cuda --steps 4 --batch 1024 --repeats 100 --kinds flow_t \
  --modes eager compiled compiled_cg_noguard 2>&1 | grep -v '^W1' | tail -25 | tee "$RES/throughput_cudagraphs.txt"
