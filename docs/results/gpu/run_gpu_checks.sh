#!/usr/bin/env bash
# The GPU checks of the speed issue, as one command on a GPU machine (docs/results/gpu/README.md):
# correctness of the fused pass on CUDA against the CPU, the chunk study, and the step-time
# benchmark on the GPU settings. Outputs go to ${OUT:-gpu_out}.
# Usage: DOMAINBED_DIR=~/DomainBed bash docs/results/gpu/run_gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
# The fused pass on CUDA gives the CPU's Agr-Sum (whole rows and chunks) and a sane Agr-Rand.
import torch
from domainbed_surgery import rules
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
g = torch.randn(3, 3_000_001, generator=torch.Generator().manual_seed(0))
g[:, :1000] = g[0, :1000].abs()  # some agreement everywhere
cpu, _ = rules.combine_in_one_pass(rules.get("AgrSum")(), g)
for chunk in (None, 1 << 19, 12345):
    gpu, passed = rules.combine_in_one_pass(rules.get("AgrSum")(), g.cuda(), chunk=chunk)
    print("AgrSum cuda chunk", chunk, "max |gpu - cpu|", (gpu.cpu() - cpu).abs().max().item(),
          "agree", int(passed.n_agree))
rng = torch.Generator(device="cuda").manual_seed(0)
r, _ = rules.combine_in_one_pass(rules.get("AgrRand")(), g.cuda(), rng)
conf = (cpu == 0).cuda()
sigma = cpu.abs().sum() / (cpu != 0).sum()
print("AgrRand cuda: agreeing equal", bool(torch.equal(r[~conf].cpu(), cpu[~conf.cpu()])),
      "noise std / sigma", (r[conf].std() / sigma.cuda()).item())
PY
timeout 150 $PY -m domainbed_surgery.scripts.benchmark --chunk_study --chunks 524288 4194304 0 \
    --settings alexnet-224-32 resnet50-224-32 efficientnet_lite0-224-128 --steps 20 --warmup 3 \
    --output_dir "$OUT/chunks" 2>&1 | tee "$OUT/chunks.log"
timeout ${BENCH_TIMEOUT:-330} $PY -m domainbed_surgery.scripts.benchmark \
    --settings resnet50-224-32 alexnet-224-32 efficientnet_lite0-224-128 resnet50-224-128 alexnet-224-128 \
    --algorithms ERM AgrSum AgrRand PCGrad ANDMask Fish paper-scheme per-domain-floor \
    --steps 20 --warmup 3 --output_dir "$OUT/bench" 2>"$OUT/bench.err" | tee "$OUT/bench.log"
