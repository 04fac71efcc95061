#!/usr/bin/env bash
# GPU checks in one go: the CUDA tests (same maths as on the CPU; CUDA-graph updates; pretrain -> finetune ->
# evaluate with device=cuda), then SAC update throughput on the GPU per sac.update_mode (also on the from-scratch
# presets' CrossQ backbone) and the same updates on one CPU thread of the same machine, every ratio measured in one
# process; the online loop on env copies with the agent on the GPU. The timeouts add up to 12 minutes.
#   bash bench/gpu_checks.sh [results-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${1:-runs/gpu_checks}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
nvidia-smi -L
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$RES/device.txt"
timeout 210 python -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$RES/test_cuda.txt"
timeout 120 python bench/update_throughput.py --device cuda --steps 1 4 10 --batch 256 1024 --repeats 30 \
  --modes eager cuda_graphs 2>&1 | tee "$RES/throughput_cuda.txt"
timeout 60 python bench/update_throughput.py --device cpu --threads 1 --steps 4 --batch 1024 --repeats 10 \
  2>&1 | tee "$RES/throughput_cpu_same_machine.txt"
timeout 120 python bench/update_throughput.py --device cuda --steps 4 --batch 1024 --repeats 100 \
  --kinds gaussian flow_t --modes eager compile cuda_graphs 2>&1 | grep -v '^W1' | tee "$RES/throughput_compile.txt"
# the online loop with the agent on the GPU: robosuite Lift on 1-4 env copies, in this process or in workers,
# eager updates and CUDA graphs (on a machine without libEGL, set robosuite's macro MUJOCO_GPU_RENDERING = False)
for mode in eager cuda_graphs; do
  timeout 60 python bench/online_throughput.py --device cuda --env robosuite/Lift --steps 300 --copies 1 4 \
    --repeats 1 --set sac.update_mode=$mode 2>&1 | grep -v 'robosuite \|__logo__' | tee "$RES/online_cuda_$mode.txt"
done
# the from-scratch presets' backbone: CrossQ critics and actor layers (Flow-T's, Gaussian's), actor every 3rd update
timeout 90 python bench/update_throughput.py --device cuda --steps 4 --batch 256 --repeats 60 \
  --modes eager cuda_graphs --set critic.kind=crossq --set sac.policy_delay=3 --set sac.adam_beta1=0.5 \
  --set policy.batch_renorm=crossq \
  2>&1 | tee "$RES/throughput_crossq.txt"
