"""Step-time benchmark: the surgery algorithms against ERM, DomainBed's ANDMask and Fish.

The library of ``python -m domainbed_surgery.scripts.benchmark [--settings ...]``. For every
setting (backbone, input size, N domains x B examples per domain) it builds every
algorithm from the same seed in one process, runs ``--warmup`` untimed steps each,
then ``--steps`` repetitions round-robin over the algorithms (the order rotates
each repetition, so no algorithm always runs right after the same one) and
reports the median time of ``algorithm.update(minibatches)`` -- CUDA is
synchronized before and after each step -- and its ratio to ERM's median.
Interleaving matters on a shared machine: a load spike hits all algorithms alike
instead of one.

Reference rows, implemented here and not registered in DomainBed:

- ``paper-scheme``: Agr-Sum computed the way the authors' public code does it
  (:class:`PaperSchemeAgrSum`): N passes with ``zero_grad``, every gradient cloned
  and concatenated into a fresh vector, freshly allocated sign arithmetic, the
  result sliced back into ``.grad``. What our preallocated fast path is compared to.
- ``per-domain-floor``: N forward/backward passes accumulating into ``.grad`` and
  one Adam step, nothing else (:class:`PerDomainFloor`). Any method that needs one
  gradient per domain pays at least this; the gap between it and AgrSum is the
  cost of keeping N gradients and combining them.

Memory, per algorithm, after the timed steps (one extra ``update`` each):

- ``step_mem_mib``: transient memory of one step above what was resident right
  before it. On CUDA: ``max_memory_allocated`` (peak reset before the step) minus
  ``memory_allocated`` before it. On CPU: the kernel's peak resident set size
  (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) minus ``VmRSS``
  before the step, after ``gc.collect()`` and glibc ``malloc_trim(0)`` so memory
  freed earlier is not silently reused. Being RSS, it includes allocator slack
  and every thread's allocations: an upper estimate of tensor memory, exact
  about what the process really touched. ``None`` where the reset is unavailable.
- ``state_mib``: bytes of the distinct tensor storages the algorithm keeps between
  steps (parameters, buffers, ``.grad``, optimizer state, tensor attributes such
  as our ``[N, P]`` buffer; views are counted once). Device independent.

A second table splits each surgery algorithm's step into its parts, timed
separately (interleaved too): ``gradients`` (``domain_gradients``, BatchNorm's
statistics recorded), ``one_pass`` (:func:`~domainbed_surgery.rules.one_pass` alone: the
Gram matrix, the agreement count and an elementwise rule's result in one read of the
``[N, P]`` buffer), ``combine`` (the whole rule: that pass, then Agr-Rand's noise or a
Gramian rule's ``weights @ grads``; so ``combine - one_pass`` is what follows the pass),
``metrics`` (agreement fraction and cosine that ``update`` logs) and ``adam``
(``optimizer.step``). ``share`` is a part's median over the update's median.

Data are random tensors from a fixed seed; hparams are DomainBed's defaults for
the algorithm on ``RotatedDigits`` (DomainBed's MNIST CNN) or ``PACS``, with the
setting's ``backbone`` and ``pretrained: False`` (no download). Timing results
are measurements, not claims: nothing here asserts anything about them.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..plugin.registration import register

register()  # everything below measures DomainBed's classes, ours included

from domainbed import algorithms as db_algorithms  # noqa: E402 - needs register() first
from domainbed import hparams_registry  # noqa: E402

from .. import rules  # noqa: E402

MIB = 2 ** 20


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One benchmark configuration: model, input and minibatch shape."""

    name: str
    backbone: Optional[str]  # None: DomainBed's own featurizer for the input shape
    input_shape: tuple[int, ...]  # [C, H, W] images, or [D] vectors (DomainBed's MLP)
    num_domains: int
    batch_size: int  # per domain
    dataset: str  # whose DomainBed default hparams to use
    num_classes: int
    hparams: tuple = ()  # extra (name, value) pairs over the dataset defaults


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("alexnet-224-32", "alexnet", (3, 224, 224), 3, 32, "PACS", 7),
    Setting("alexnet-224-128", "alexnet", (3, 224, 224), 3, 128, "PACS", 7),
    Setting("resnet50-224-32", "resnet50", (3, 224, 224), 3, 32, "PACS", 7),
    Setting("resnet50-224-128", "resnet50", (3, 224, 224), 3, 128, "PACS", 7),
    Setting("mnist-28", None, (1, 28, 28), 3, 32, "RotatedDigits", 10),
    Setting("resnet18-64", "resnet18", (3, 64, 64), 3, 16, "PACS", 7),
    # For tests of this script (DomainBed's MLP on 16-d vectors): a second on a CPU,
    # not a measurement of anything.
    Setting("tiny", None, (16,), 3, 4, "RotatedDigits", 10,
            (("mlp_width", 64), ("mlp_depth", 3), ("mlp_dropout", 0.0))),
)}
#: Names that stand for several settings.
ALIASES = {
    "alexnet-224": ("alexnet-224-32", "alexnet-224-128"),
    "resnet50-224": ("resnet50-224-32", "resnet50-224-128"),
}
GPU_SETTINGS = ("alexnet-224-32", "alexnet-224-128", "resnet50-224-32", "resnet50-224-128")
CPU_SETTINGS = ("mnist-28", "resnet18-64")

PAPER = "paper-scheme"
FLOOR = "per-domain-floor"
#: Every available rule of the registry (the paper's three first, then TorchJD's).
SURGERY_ALGORITHMS = tuple(rules.names())
DEFAULT_ALGORITHMS = ("ERM", *SURGERY_ALGORITHMS, "ANDMask", "Fish", PAPER, FLOOR)
PARTS = ("gradients", "one_pass", "combine", "metrics", "adam")

RESULT_COLUMNS = ("setting", "algorithm", "device", "threads", "backbone", "input_shape",
                  "domains", "batch_per_domain", "params", "steps", "warmup", "median_ms",
                  "p25_ms", "p75_ms", "min_ms", "ratio_to_erm", "step_mem_mib", "state_mib",
                  "mem_method")
PART_COLUMNS = ("setting", "algorithm", "part", "median_ms", "p25_ms", "p75_ms",
                "update_median_ms", "share")


def resolve_settings(names) -> list[Setting]:
    """Setting objects for ``names`` (aliases expanded, order kept, no duplicates)."""
    out: list[Setting] = []
    for name in names:
        for n in ALIASES.get(name, (name,)):
            if n not in SETTINGS:
                raise SystemExit(f"unknown setting {n!r}; choose from "
                                 f"{sorted(SETTINGS) + sorted(ALIASES)}")
            if SETTINGS[n] not in out:
                out.append(SETTINGS[n])
    return out


# --------------------------------------------------------------------------------------
# Reference algorithms
# --------------------------------------------------------------------------------------
class PaperSchemeAgrSum(db_algorithms.ERM):
    """Agr-Sum the way the authors' public code computes it (reference for timing).

    Per domain: ``zero_grad``, forward, cross-entropy, backward, then every
    parameter's ``.grad`` is cloned, flattened and concatenated into a new vector.
    The N vectors are stacked; agreement is taken from freshly allocated sign
    tensors (``|sum_i sgn(g_i)| == N``, so all-zero components count as conflicts,
    as in their code; the sum there is 0 either way); the masked sum is written
    back into ``.grad`` slice by slice and Adam steps. Same result as
    :class:`~domainbed_surgery.surgery.algorithm.GradientSurgery`, different memory traffic.
    """

    def update(self, minibatches, unlabeled=None):
        params = [p for p in self.network.parameters() if p.requires_grad]
        flat_grads = []
        total_loss = 0.0
        for x, y in minibatches:
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.predict(x), y)
            loss.backward()
            flat_grads.append(torch.cat([
                (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).flatten()
                for p in params]))
            total_loss += loss.item()
        stacked = torch.stack(flat_grads)
        signs = torch.sign(stacked)
        agree = signs.sum(dim=0).abs() == len(minibatches)
        combined = stacked.sum(dim=0) * agree.to(stacked.dtype)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(combined[offset:offset + n].view_as(p))
            offset += n
        self.optimizer.step()
        return {"loss": total_loss / len(minibatches)}


class PerDomainFloor(db_algorithms.ERM):
    """N per-domain forward/backward passes summed into ``.grad``, one Adam step.

    Not a DG method: the least any per-domain-gradient algorithm must do (the
    extra passes over ERM's one batched pass, and one optimizer step).
    """

    def update(self, minibatches, unlabeled=None):
        self.optimizer.zero_grad()
        losses = []
        for x, y in minibatches:
            loss = F.cross_entropy(self.predict(x), y)
            loss.backward()
            losses.append(loss.detach())
        self.optimizer.step()
        return {"loss": torch.stack(losses).mean().item()}


REFERENCE_CLASSES = {PAPER: PaperSchemeAgrSum, FLOOR: PerDomainFloor}


def hparams_for(algorithm: str, setting: Setting) -> dict:
    """DomainBed default hparams for ``algorithm`` with the setting's backbone, untrained."""
    base = "ERM" if algorithm in REFERENCE_CLASSES else algorithm
    hparams = hparams_registry.default_hparams(base, setting.dataset)
    hparams.update({"backbone": setting.backbone, "pretrained": False, **dict(setting.hparams)})
    return hparams


def build(algorithm: str, setting: Setting, device: torch.device, seed: int = 0):
    """The algorithm for ``setting``, initialized from ``seed``, in train mode on ``device``."""
    cls = REFERENCE_CLASSES.get(algorithm) or db_algorithms.get_algorithm_class(algorithm)
    torch.manual_seed(seed)  # as DomainBed's train.py does before building
    alg = cls(setting.input_shape, setting.num_classes, setting.num_domains,
              hparams_for(algorithm, setting))
    return alg.to(device).train()


def make_minibatches(setting: Setting, device: torch.device, seed: int = 0):
    """``num_domains`` random (x, y) minibatches from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(setting.num_domains):
        x = torch.randn((setting.batch_size, *setting.input_shape), generator=gen)
        y = torch.randint(0, setting.num_classes, (setting.batch_size,), generator=gen)
        batches.append((x.to(device), y.to(device)))
    return batches


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds ``fn()`` takes (CUDA synchronized on both sides) and its result."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StepMemory:
    """Peak memory one call adds above what was resident right before it (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated - memory_allocated"
        elif _proc_status_kib("VmHWM") is not None and _reset_peak_rss():
            self.method = "VmHWM (reset via clear_refs) - VmRSS, after malloc_trim"
        else:
            self.method = "unavailable"

    def measure(self, fn: Callable[[], object]) -> Optional[float]:
        """Run ``fn`` once; bytes of peak growth, or None if this platform cannot tell."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device) - base)
        if self.method == "unavailable":
            fn()
            return None
        _malloc_trim()
        base = _proc_status_kib("VmRSS")
        _reset_peak_rss()
        fn()
        peak = _proc_status_kib("VmHWM")
        return float(max(peak - base, 0) * 1024)


def state_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj``'s state.

    Walks modules (parameters, their ``.grad``, buffers, submodules), optimizers'
    state and plain attributes (tensors, lists, tuples, dicts); counts each storage
    once, so views into one buffer (our per-parameter gradient views) cost nothing extra.
    """
    storages: dict[tuple, int] = {}
    seen: set[int] = set()

    def visit(x, depth: int) -> None:
        if depth > 200 or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[(x.device.type, x.device.index, s.data_ptr())] = s.nbytes()
            if isinstance(x, torch.nn.Parameter) and x.grad is not None:
                visit(x.grad, depth + 1)
        elif isinstance(x, torch.optim.Optimizer):
            visit(list(x.state.values()), depth + 1)
        elif isinstance(x, dict):
            for k, v in x.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(x, (list, tuple, set)):
            for v in x:
                visit(v, depth + 1)
        elif isinstance(x, torch.nn.Module):
            visit(vars(x), depth + 1)

    visit(obj, 0)
    return sum(storages.values())


def _quantiles(values: list[float]) -> tuple[float, float, float, float]:
    """(median, 25th percentile, 75th percentile, min) in milliseconds."""
    ms = sorted(v * 1e3 for v in values)
    if len(ms) == 1:
        return ms[0], ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return statistics.median(ms), q[0], q[2], ms[0]


# --------------------------------------------------------------------------------------
# One setting
# --------------------------------------------------------------------------------------
def _parts_once(alg, minibatches, device) -> dict[str, float]:
    """Time the pieces of one surgery ``update`` separately (same calls, same order)."""
    out = {}
    out["gradients"], (grads, _losses) = timed(lambda: alg.domain_gradients(minibatches), device)
    rule = alg.rule
    out["one_pass"], _ = timed(lambda: rules.one_pass(
        grads, rule if isinstance(rule, rules.ElementwiseRule) else None, out=alg._combined), device)
    out["combine"], (_, passed) = timed(lambda: alg.combine(grads), device)

    def metrics():
        agreement = passed.n_agree / grads.shape[1]
        cosine = rules.pairwise_cosine(passed.gram)
        return torch.stack([agreement.double(), cosine]).tolist()

    out["metrics"], _ = timed(metrics, device)
    for p, g in zip(alg._params, alg._combined_views):  # as update() does before its step
        p.grad = g
    out["adam"], _ = timed(alg.optimizer.step, device)
    return out


def run_setting(setting: Setting, algorithm_names, device: torch.device, steps: int,
                warmup: int, seed: int = 0, log=print) -> tuple[list[dict], list[dict]]:
    """Benchmark ``algorithm_names`` on ``setting``; rows for the two tables."""
    minibatches = make_minibatches(setting, device, seed)
    algs = {}
    for name in algorithm_names:
        algs[name] = build(name, setting, device, seed)
    n_params = {n: sum(p.numel() for p in a.network.parameters()) for n, a in algs.items()}

    names = list(algorithm_names)
    for _ in range(warmup):
        for name in names:
            algs[name].update(minibatches)

    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(steps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            seconds, _ = timed(lambda: algs[name].update(minibatches), device)
            times[name].append(seconds)
        log(f"  [{setting.name}] repetition {rep + 1}/{steps} done")

    probe = StepMemory(device)
    step_mem = {n: probe.measure(lambda: algs[n].update(minibatches)) for n in names}
    state = {n: state_bytes(algs[n]) for n in names}

    surgery_names = [n for n in names if n in SURGERY_ALGORITHMS]
    part_times: dict[str, dict[str, list[float]]] = {
        n: {p: [] for p in PARTS} for n in surgery_names}
    for rep in range(steps if surgery_names else 0):
        k = rep % len(surgery_names)
        for name in surgery_names[k:] + surgery_names[:k]:
            for part, seconds in _parts_once(algs[name], minibatches, device).items():
                part_times[name][part].append(seconds)

    medians = {n: _quantiles(times[n])[0] for n in names}
    erm = medians.get("ERM")
    rows = []
    for name in names:
        med, p25, p75, lo = _quantiles(times[name])
        rows.append({
            "setting": setting.name, "algorithm": name, "device": device.type,
            "threads": torch.get_num_threads(), "backbone": setting.backbone or "domainbed",
            "input_shape": "x".join(map(str, setting.input_shape)),
            "domains": setting.num_domains, "batch_per_domain": setting.batch_size,
            "params": n_params[name], "steps": steps, "warmup": warmup,
            "median_ms": round(med, 3), "p25_ms": round(p25, 3), "p75_ms": round(p75, 3),
            "min_ms": round(lo, 3),
            "ratio_to_erm": round(med / erm, 3) if erm else None,
            "step_mem_mib": None if step_mem[name] is None else round(step_mem[name] / MIB, 1),
            "state_mib": round(state[name] / MIB, 1), "mem_method": probe.method,
        })
    part_rows = []
    for name in surgery_names:
        for part in PARTS:
            med, p25, p75, _ = _quantiles(part_times[name][part])
            part_rows.append({
                "setting": setting.name, "algorithm": name, "part": part,
                "median_ms": round(med, 3), "p25_ms": round(p25, 3), "p75_ms": round(p75, 3),
                "update_median_ms": round(medians[name], 3),
                "share": round(med / medians[name], 3) if medians[name] else None,
            })
    algs.clear()  # free the models before the next setting
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, part_rows


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What the numbers were measured on."""
    return {
        "device": device_name(device), "device_type": device.type,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table: ``columns`` are (key, header) pairs."""
    cells = [[h for _, h in columns]] + [
        ["-" if r[k] is None else str(r[k]) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cell, widths)))
             for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


RESULT_TABLE = [("algorithm", "algorithm"), ("median_ms", "median ms"), ("p25_ms", "p25"),
                ("p75_ms", "p75"), ("min_ms", "min"), ("ratio_to_erm", "x ERM"), ("step_mem_mib", "step MiB"),
                ("state_mib", "state MiB")]
PART_TABLE = [("algorithm", "algorithm"), ("part", "part"), ("median_ms", "median ms"),
              ("p25_ms", "p25"), ("p75_ms", "p75"), ("share", "share of update")]


def write_outputs(output_dir: Path, env: dict, args: dict, rows, part_rows) -> None:
    """``benchmark.csv``, ``benchmark_parts.csv`` and ``benchmark.json`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, columns, data in (("benchmark.csv", RESULT_COLUMNS, rows),
                                ("benchmark_parts.csv", PART_COLUMNS, part_rows)):
        with open(output_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(data)
    with open(output_dir / "benchmark.json", "w") as f:
        json.dump({"environment": env, "args": args, "results": rows, "parts": part_rows},
                  f, indent=2)


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Benchmark ``args.settings`` x ``args.algorithms`` (the CLI's namespace); print the
    tables, write the outputs if ``args.output_dir``; return (result rows, part rows)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = resolve_settings(
        args.settings or (GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS))
    for name in args.algorithms:
        if name not in REFERENCE_CLASSES and name not in db_algorithms.ALGORITHMS:
            raise SystemExit(f"unknown algorithm {name!r}")
    if "ERM" not in args.algorithms:
        print("note: ERM not among --algorithms, so no ratio to ERM", file=sys.stderr)

    env = environment(device)
    print(f"device: {env['device']} ({device}), torch {env['torch']}, "
          f"threads {env['threads']}, load average {env['loadavg']}")
    rows, part_rows = [], []
    for setting in settings:
        print(f"\nsetting {setting.name}: backbone {setting.backbone or 'DomainBed default'}, "
              f"input {setting.input_shape}, {setting.num_domains} domains x "
              f"{setting.batch_size}, hparams from {setting.dataset}; "
              f"{args.warmup} warm-up + {args.steps} timed steps each", flush=True)
        started = time.perf_counter()
        r, p = run_setting(setting, args.algorithms, device, args.steps, args.warmup, args.seed,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
        rows += r
        part_rows += p
        print(format_table(r, RESULT_TABLE))
        if p:
            print("\nparts of one surgery step (timed separately):")
            print(format_table(p, PART_TABLE))
        print(f"({time.perf_counter() - started:.0f} s; memory: {r[0]['mem_method']})", flush=True)
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end: {env['loadavg_end']}")
    if args.output_dir:
        write_outputs(Path(args.output_dir), env, vars(args), rows, part_rows)
        print(f"wrote {args.output_dir}/benchmark.csv, benchmark_parts.csv, benchmark.json")
    return rows, part_rows
