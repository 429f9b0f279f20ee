"""Step-time benchmark: the surgery algorithms against ERM, DomainBed's ANDMask and Fish.

The library of ``python -m domainbed_surgery.scripts.benchmark [--settings ...]``. For every
setting (backbone, input size, N domains x B examples per domain) it builds every
algorithm from the same seed in one process, runs ``--warmup`` untimed steps each,
then ``--steps`` repetitions round-robin over the algorithms (the order rotates
each repetition, so no algorithm always runs right after the same one) and
reports the median time of ``algorithm.update(minibatches)`` -- CUDA is
synchronized before and after each step -- and its ratio to ERM's median, and the mean
and its ratio: with ``surgery_diagnostics_every`` k > 1 one step in k also computes the
logged diagnostics, which the median hides and the mean amortizes.
Interleaving matters on a shared machine: a load spike hits all algorithms alike
instead of one. But one process hosting many algorithms adds its own bias: a step
right after another algorithm's step finds the allocator's heap and the caches in that
algorithm's state (measured on the 2-core CPU: several ms for whoever follows ERM's
batched pass, which the rotation always puts in the same place), unlike any step of a
training run. So each timed step comes right after ``--settle`` (default 1) untimed steps
of the same algorithm, as in training. It also pairs the measurements (:mod:`.paired`):
``paired_ratio_to_erm`` is the median of the per-repetition ratios to ERM's step of the
same repetition, and a third table compares every surgery algorithm with each reference
present (ANDMask, the paper's scheme, the per-domain floor) repetition by repetition: the
median difference with its 95% confidence interval, the share of repetitions it was
faster and a one-sided Wilcoxon signed-rank p-value. Every timed step is written too
(``benchmark_times.csv``).

The C allocator: by default (``--allocator keep``) glibc is set to keep freed memory in
the process (:mod:`.allocator`) for every algorithm alike, so a step does not page-fault
its activations in again each time (on the 2-core CPU 100-139 ms of system time per
efficientnet_lite0-128 step in a process of its own, varying with the machine's memory
state). ``--allocator system`` leaves glibc's defaults.

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
separately (interleaved too), through the algorithm's public phases: ``gradients``
(:meth:`~domainbed_surgery.surgery.algorithm.GradientSurgery.gradients`), ``one_pass`` (:func:`~domainbed_surgery.rules.one_pass` alone: the
Gram matrix, the agreement count and an elementwise rule's result in one read of the
``[N, P]`` buffer), ``combine`` (the whole rule: that pass, then Agr-Rand's noise or a
Gramian rule's ``weights @ grads``; so ``combine - one_pass`` is what follows the pass),
``combine_no_diagnostics`` (the same on a step without the logged diagnostics, see
``surgery_diagnostics_every``: ``combine`` minus it is what the diagnostics cost),
``metrics`` (what ``update`` logs: loss, agreement fraction and cosine) and ``adam``
(``apply``: the update as ``.grad``, ``optimizer.step``). ``share`` is a part's median over the update's median.

Data are random tensors from a fixed seed; hparams are DomainBed's defaults for
the algorithm on ``RotatedDigits`` (DomainBed's MNIST CNN) or ``PACS``, with the
setting's ``backbone`` and ``pretrained: False`` (no download). Timing results
are measurements, not claims: nothing here asserts anything about them.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .. import rules
from . import allocator
from .memory import StepMemory, state_bytes
from .paired import PAIRED_COLUMNS, compare, paired_ratio
from .settings import ALIASES, CPU_SETTINGS, GPU_SETTINGS, SETTINGS, Setting, make_minibatches, \
    resolve_settings

__all__ = ["SETTINGS", "ALIASES", "CPU_SETTINGS", "GPU_SETTINGS", "DEFAULT_ALGORITHMS", "PAPER",
           "FLOOR", "SURGERY_ALGORITHMS", "PARTS", "REFERENCES", "RESULT_COLUMNS", "PART_COLUMNS",
           "PAIRED_COLUMNS", "TIME_COLUMNS", "Setting",
           "make_minibatches", "resolve_settings", "build", "run_setting", "run", "format_table",
           "write_csv"]

MIB = 2 ** 20
#: The reference rows (:mod:`.references`, built on DomainBed's ERM).
PAPER = "paper-scheme"
FLOOR = "per-domain-floor"
#: Every available rule of the registry (the paper's three first, then TorchJD's).
SURGERY_ALGORITHMS = tuple(rules.names())
DEFAULT_ALGORITHMS = ("ERM", *SURGERY_ALGORITHMS, "ANDMask", "Fish", PAPER, FLOOR)
#: What every surgery algorithm is compared with, repetition by repetition (where present).
REFERENCES = ("ANDMask", PAPER, FLOOR)
PARTS = ("gradients", "one_pass", "combine", "combine_no_diagnostics", "metrics", "adam")

RESULT_COLUMNS = ("setting", "algorithm", "device", "threads", "backbone", "input_shape",
                  "domains", "batch_per_domain", "params", "steps", "warmup", "median_ms",
                  "p25_ms", "p75_ms", "min_ms", "ratio_to_erm", "paired_ratio_to_erm", "mean_ms",
                  "mean_ratio_to_erm",
                  "step_mem_mib", "state_mib", "mem_method")
#: ``benchmark_times.csv``: every timed step, so the tables can be recomputed or tested
#: otherwise (``position``: its place in that repetition's rotated order, from 0).
TIME_COLUMNS = ("setting", "algorithm", "repetition", "position", "ms")
PART_COLUMNS = ("setting", "algorithm", "part", "median_ms", "p25_ms", "p75_ms",
                "update_median_ms", "share")


# --------------------------------------------------------------------------------------
# Building the algorithms (DomainBed's classes, ours registered, and the references)
# --------------------------------------------------------------------------------------
def _domainbed():
    """DomainBed's algorithms and hparams registry, with everything of ours registered."""
    from ..plugin.registration import register  # noqa: PLC0415

    register()
    from domainbed import algorithms, hparams_registry  # noqa: PLC0415

    return algorithms, hparams_registry


def reference_classes() -> dict:
    """The reference rows' classes, by name."""
    _domainbed()
    from .references import PerDomainFloor, PaperSchemeAgrSum  # noqa: PLC0415

    return {PAPER: PaperSchemeAgrSum, FLOOR: PerDomainFloor}


def hparams_for(algorithm: str, setting: Setting) -> dict:
    """DomainBed default hparams for ``algorithm`` with the setting's backbone, untrained."""
    base = "ERM" if algorithm in (PAPER, FLOOR) else algorithm
    hparams = _domainbed()[1].default_hparams(base, setting.dataset)
    hparams.update({"backbone": setting.backbone, "pretrained": False, **dict(setting.hparams)})
    return hparams


def build(algorithm: str, setting: Setting, device: torch.device, seed: int = 0):
    """The algorithm for ``setting``, initialized from ``seed``, in train mode on ``device``."""
    cls = reference_classes().get(algorithm) or _domainbed()[0].get_algorithm_class(algorithm)
    torch.manual_seed(seed)  # as DomainBed's train.py does before building
    alg = cls(setting.input_shape, setting.num_classes, setting.num_domains,
              hparams_for(algorithm, setting))
    return alg.to(device).train()


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
    """Time the public phases of one surgery ``update`` separately (same calls, same order),
    with the diagnostics of a diagnostic step."""
    out = {}
    out["gradients"], (grads, losses) = timed(lambda: alg.gradients(minibatches), device)
    rule = alg.rule
    out["one_pass"], _ = timed(lambda: rules.one_pass(
        grads, rule if isinstance(rule, rules.ElementwiseRule) else None, out=alg.update_vector),
        device)
    out["combine_no_diagnostics"], _ = timed(lambda: alg.combine(grads, diagnostics=False),
                                             device)
    out["combine"], passed = timed(lambda: alg.combine(grads, diagnostics=True), device)
    out["metrics"], _ = timed(lambda: alg.metrics(losses, passed), device)
    out["adam"], _ = timed(alg.apply, device)
    return out


def run_setting(setting: Setting, algorithm_names, device: torch.device, steps: int,
                warmup: int, seed: int = 0, log=print,
                settle: int = 1) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Benchmark ``algorithm_names`` on ``setting``; rows for the three tables (steps,
    parts, paired comparisons) and every timed step. ``settle`` untimed steps of an
    algorithm precede each of its timed steps (and each timed step of its parts)."""
    if settle < 0:
        raise ValueError(f"settle must be >= 0, got {settle}")
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
    time_rows: list[dict] = []
    for rep in range(steps):
        k = rep % len(names)
        for position, name in enumerate(names[k:] + names[:k]):
            for _ in range(settle):  # back in this algorithm's own steady state
                algs[name].update(minibatches)
            seconds, _ = timed(lambda: algs[name].update(minibatches), device)
            times[name].append(seconds)
            time_rows.append({"setting": setting.name, "algorithm": name, "repetition": rep,
                              "position": position, "ms": round(seconds * 1e3, 3)})
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
            for _ in range(settle):
                algs[name].update(minibatches)
            for part, seconds in _parts_once(algs[name], minibatches, device).items():
                part_times[name][part].append(seconds)

    medians = {n: _quantiles(times[n])[0] for n in names}
    means = {n: statistics.fmean(times[n]) * 1e3 for n in names}
    erm, erm_mean = medians.get("ERM"), means.get("ERM")
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
            "paired_ratio_to_erm": round(paired_ratio(times[name], times["ERM"]), 3)
            if erm else None,
            "mean_ms": round(means[name], 3),
            "mean_ratio_to_erm": round(means[name] / erm_mean, 3) if erm_mean else None,
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
    paired_rows = []
    for name in surgery_names:
        for reference in (r for r in REFERENCES if r in times):
            c = compare(times[name], times[reference], times["ERM"] if erm else None)
            paired_rows.append({
                "setting": setting.name, "algorithm": name, "reference": reference,
                "steps": steps, "median_diff_ms": round(c["median_diff_ms"], 3),
                **{k: None if c[k] is None else round(c[k], 3)
                   for k in ("ci95_low_ms", "ci95_high_ms")},
                "median_diff_erm_steps": None if c["median_diff_erm_steps"] is None
                else round(c["median_diff_erm_steps"], 4),
                "faster_share": round(c["faster_share"], 3),
                "wilcoxon_p_faster": None if c["wilcoxon_p_faster"] is None
                else float(f"{c['wilcoxon_p_faster']:.3g}"),
            })
    algs.clear()  # free the models before the next setting
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, part_rows, paired_rows, time_rows


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
        "cpu_kernels": rules.compiled.describe(), "allocator": allocator.describe(),
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
                ("p75_ms", "p75"), ("min_ms", "min"), ("ratio_to_erm", "x ERM"),
                ("paired_ratio_to_erm", "paired x ERM"), ("mean_ms", "mean ms"),
                ("mean_ratio_to_erm", "mean x ERM"), ("step_mem_mib", "step MiB"),
                ("state_mib", "state MiB")]
PAIRED_TABLE = [("algorithm", "algorithm"), ("reference", "against"),
                ("median_diff_ms", "median diff ms"), ("ci95_low_ms", "95% CI from"),
                ("ci95_high_ms", "to"), ("median_diff_erm_steps", "in ERM steps"),
                ("faster_share", "faster in"), ("wilcoxon_p_faster", "p (faster)")]
PART_TABLE = [("algorithm", "algorithm"), ("part", "part"), ("median_ms", "median ms"),
              ("p25_ms", "p25"), ("p75_ms", "p75"), ("share", "share of update")]


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    """``rows`` as CSV with ``columns`` (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(output_dir: Path, env: dict, args: dict, rows, part_rows,
                  paired_rows, time_rows=()) -> None:
    """``benchmark.csv``, ``benchmark_parts.csv``, ``benchmark_paired.csv``,
    ``benchmark_times.csv`` (every timed step) and ``benchmark.json`` in ``output_dir``."""
    for name, columns, data in (("benchmark.csv", RESULT_COLUMNS, rows),
                                ("benchmark_parts.csv", PART_COLUMNS, part_rows),
                                ("benchmark_paired.csv", PAIRED_COLUMNS, paired_rows),
                                ("benchmark_times.csv", TIME_COLUMNS, list(time_rows))):
        write_csv(output_dir / name, columns, data)
    with open(output_dir / "benchmark.json", "w") as f:
        json.dump({"environment": env, "args": args, "results": rows, "parts": part_rows,
                   "paired": paired_rows}, f, indent=2)


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Benchmark ``args.settings`` x ``args.algorithms`` (the CLI's namespace); print the
    tables, write the outputs if ``args.output_dir``; return (result rows, part rows)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = resolve_settings(
        args.settings or (GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS))
    known = set(reference_classes()) | set(_domainbed()[0].ALGORITHMS)
    for name in args.algorithms:
        if name not in known:
            raise SystemExit(f"unknown algorithm {name!r}")
    if "ERM" not in args.algorithms:
        print("note: ERM not among --algorithms, so no ratio to ERM", file=sys.stderr)

    if args.allocator == "keep":
        allocator.keep_freed_memory()
    env = environment(device)
    print(f"device: {env['device']} ({device}), torch {env['torch']}, "
          f"threads {env['threads']}, load average {env['loadavg']}, CPU kernels: {env['cpu_kernels']}; "
          f"allocator: {env['allocator']}")
    rows, part_rows, paired_rows, time_rows = [], [], [], []
    for setting in settings:
        print(f"\nsetting {setting.name}: backbone {setting.backbone or 'DomainBed default'}, "
              f"input {setting.input_shape}, {setting.num_domains} domains x "
              f"{setting.batch_size}, hparams from {setting.dataset}; "
              f"{args.warmup} warm-up + {args.steps} timed steps each", flush=True)
        started = time.perf_counter()
        r, p, c, t = run_setting(setting, args.algorithms, device, args.steps, args.warmup,
                                 args.seed,
                                 log=lambda msg: print(msg, file=sys.stderr, flush=True),
                                 settle=args.settle)
        rows += r
        part_rows += p
        paired_rows += c
        time_rows += t
        print(format_table(r, RESULT_TABLE))
        if p:
            print("\nparts of one surgery step (timed separately):")
            print(format_table(p, PART_TABLE))
        if c:
            print("\npaired, repetition by repetition (negative: faster than the reference):")
            print(format_table(c, PAIRED_TABLE))
        print(f"({time.perf_counter() - started:.0f} s; memory: {r[0]['mem_method']})", flush=True)
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end: {env['loadavg_end']}")
    if args.output_dir:
        write_outputs(Path(args.output_dir), env, vars(args), rows, part_rows, paired_rows,
                      time_rows)
        print(f"wrote {args.output_dir}/benchmark.csv, benchmark_parts.csv, "
              "benchmark_paired.csv, benchmark_times.csv, benchmark.json")
    return rows, part_rows
