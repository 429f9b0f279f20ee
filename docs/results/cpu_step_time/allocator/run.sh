#!/usr/bin/env bash
# ERM and AgrSum step on each CPU setting, glibc defaults vs kept memory, two alternating processes each
cd "$(dirname "$0")/../../../.."
export DOMAINBED_DIR=$HOME/DomainBed
for rep in 1 2; do
 for s in efficientnet_lite0-128 resnet18-64 mnist-28; do
  for alg in ERM AgrSum; do
   TAG=system "${PYTHON:-python}" docs/results/cpu_step_time/allocator/step_faults.py $s $alg 10 2>&1 | tail -1
   MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 TAG=keep "${PYTHON:-python}" docs/results/cpu_step_time/allocator/step_faults.py $s $alg 10 2>&1 | tail -1
  done
 done
done
