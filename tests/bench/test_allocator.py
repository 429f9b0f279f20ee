"""The benchmark's allocator setting (glibc keeps freed memory): measured on the step it was
made for: AgrSum's training steps on the pretrained experiments' CPU setting
(efficientnet_lite0-128), each in a fresh process since the setting is process-wide.

By glibc's defaults such a step page-faults its re-allocated activations in again every
time (AgrSum: 63,000-69,000 minor faults per step on the development machine,
docs/results/cpu_step_time/allocator); kept, 512-743. The weights come out bitwise the
same: only where memory comes from changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from domainbed_surgery.bench import allocator

pytestmark = pytest.mark.skipif(allocator.glibc_version() is None,
                                reason="the C library is not glibc")

TRAIN = """
import hashlib, json, resource, sys, torch
from domainbed_surgery.bench import allocator, step_time
from domainbed_surgery.bench.settings import SETTINGS, make_minibatches
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(2)
setting = SETTINGS["efficientnet_lite0-128"]
batches = make_minibatches(setting, torch.device("cpu"))
alg = step_time.build(sys.argv[2], setting, torch.device("cpu"))
for _ in range(2):  # the first steps allocate what later ones reuse
    alg.update(batches)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    alg.update(batches)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in alg.parameters()))
print(json.dumps({"kept": kept, "faults": faults, "digest": digest.hexdigest(),
                  "describe": allocator.describe()}))
"""
ALGORITHMS = ("AgrSum",)


def train(mode: str, algorithm: str, extra_env: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", TRAIN, mode, algorithm], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(domainbed) -> dict:
    """(mode, algorithm) -> the child's record: faults per step after two warm-up steps."""
    return {(mode, name): train(mode, name) for mode in ("system", "keep") for name in ALGORITHMS}


def test_kept_memory_stops_the_steps_page_faults(runs):
    for name in ALGORITHMS:
        system, kept = runs["system", name], runs["keep", name]
        assert "its defaults" in system["describe"]
        assert kept["kept"] is True
        assert kept["describe"].endswith(
            "freed memory kept (mmap threshold 32 MiB, trim threshold 1 GiB)")
        assert system["faults"] > 20_000, system
        assert kept["faults"] < system["faults"] / 5, (system, kept)


def test_kept_memory_trains_to_the_same_bits(runs):
    for name in ALGORITHMS:
        assert runs["system", name]["digest"] == runs["keep", name]["digest"]


def test_the_environment_variables_are_the_same_setting(runs):
    """What the README tells users to export for training does what the benchmark does."""
    exported = train("system", "AgrSum", allocator.ENVIRONMENT)
    assert exported["describe"].endswith(
        "MALLOC_MMAP_THRESHOLD_=33554432, MALLOC_TRIM_THRESHOLD_=1073741824")
    assert exported["faults"] < runs["system", "AgrSum"]["faults"] / 5
    assert exported["digest"] == runs["system", "AgrSum"]["digest"]
