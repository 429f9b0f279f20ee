"""The ``parallel`` launcher: run DomainBed's commands concurrently on this machine.

Options are environment variables (DomainBed's sweep CLI has no place for them):

``DOMAINBED_PARALLEL_GPUS``
    Comma-separated GPU ids to use. Default: ``CUDA_VISIBLE_DEVICES`` if set, else
    every GPU torch sees. ``none`` (or an empty value) forces CPU mode.
``DOMAINBED_PARALLEL_PER_GPU``
    Jobs sharing each GPU at once (default 1). Each job gets ``CUDA_VISIBLE_DEVICES``
    set to its GPU.
``DOMAINBED_PARALLEL_JOBS``
    CPU mode: jobs at once. Default ``max(1, cores // 2)``: DomainBed's small CPU
    models gain little beyond ~2 threads each, and every job holds its own copy of
    the dataset, so two threads per job is a throughput/memory compromise.
``DOMAINBED_PARALLEL_THREADS``
    Threads per job (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``). Default ``max(1, cores // jobs at once)`` so the jobs
    do not oversubscribe the cores ("cores" = CPUs this process may run on).
``DOMAINBED_PARALLEL_PROGRESS``
    Where the progress bar goes: ``stderr`` (default), ``tty`` (the terminal, if there
    is one, even when stdout and stderr go to a log file; ``sweeps/demo.sh`` uses it)
    or ``none``.
``DOMAINBED_PARALLEL_LOG_DIR``
    Where a job's own stdout+stderr go when its command has no ``--output_dir``
    (default: a fresh temporary folder). With ``--output_dir DIR`` they go to
    ``DIR/launcher.txt`` (DomainBed's train.py also tees to ``DIR/out.txt``/``err.txt``).

DomainBed's train commands run as our resumable train (:func:`.process.resumable`): a
job stopped by the launcher saves its state, and a relaunch continues it.

It shows a tqdm bar with done/failed counts; a failed job does not stop the
others, and failures are listed at the end (command, exit code, ``err.txt``), after
which the launcher raises :class:`JobsFailed` so that the sweep exits with status 1.
Ctrl-C, SIGTERM (``timeout``, a cluster's job limit) and SIGHUP terminate the running
jobs' process groups (SIGTERM, then SIGKILL after ``DOMAINBED_PARALLEL_KILL_GRACE``
seconds, default 5); then Ctrl-C re-raises ``KeyboardInterrupt`` and the others exit
with status 128 + the signal number. If the sweep is killed outright (SIGKILL, out of
memory), each job still dies with it: it runs under a small guard
(:mod:`domainbed_surgery.launch.jobguard`) that the kernel signals when the launcher dies.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, TextIO

from .process import (JobsFailed, StopSignals, Terminated, available_cores, env, env_int,
                      exit_on, kill_grace, kill_groups, output_dir_of, resumable, start_job)

ENV_PREFIX_PARALLEL = "DOMAINBED_PARALLEL_"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _gpu_ids() -> list[str]:
    raw = env(ENV_PREFIX_PARALLEL + "GPUS")
    if raw is None:
        raw = env("CUDA_VISIBLE_DEVICES")
        if raw is None:
            try:
                import torch  # noqa: PLC0415 - only to count GPUs; does not init CUDA

                return [str(i) for i in range(torch.cuda.device_count())]
            except ImportError:
                return []
    if raw.lower() == "none":
        return []
    return [g.strip() for g in raw.split(",") if g.strip() not in ("", "-1")]


@dataclass
class JobResult:
    """What became of one command (returned by the launchers, also for tests)."""

    index: int
    command: str
    returncode: Optional[int] = None  # None: did not finish (interrupted / not started)
    log: Optional[str] = None
    seconds: float = 0.0
    env: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def err_txt(self) -> Optional[str]:
        out = output_dir_of(self.command)
        return None if out is None else os.path.join(out, "err.txt")


@dataclass
class ParallelPlan:
    """The slots (one per concurrently running job) and per-job extra environment."""

    slots: list[dict]  # each: env vars for a job running in that slot
    threads: int
    gpus: list[str]

    @classmethod
    def from_env(cls) -> "ParallelPlan":
        cores = available_cores()
        gpus = _gpu_ids()
        if gpus:
            per_gpu = env_int(ENV_PREFIX_PARALLEL + "PER_GPU", 1, minimum=1)
            slots = [{"CUDA_VISIBLE_DEVICES": g} for _ in range(per_gpu) for g in gpus]
        else:
            jobs = env_int(ENV_PREFIX_PARALLEL + "JOBS", max(1, cores // 2), minimum=1)
            slots = [{} for _ in range(jobs)]
        threads = env_int(ENV_PREFIX_PARALLEL + "THREADS", max(1, cores // len(slots)),
                           minimum=1)
        for slot in slots:
            slot.update({var: str(threads) for var in THREAD_VARS})
        return cls(slots=slots, threads=threads, gpus=gpus)


def parallel_launcher(commands: Sequence[str], *, poll_s: float = 0.1,
                      progress: bool = True, check: bool = True) -> list[JobResult]:
    """Run ``commands`` concurrently on this machine (see the module docstring).

    Each command runs with ``shell=True`` under a :mod:`.jobguard` in its own
    session/process group, so Ctrl-C reaches only the launcher, and the jobs die with
    the launcher however it dies. On Ctrl-C (SIGINT), SIGTERM or SIGHUP the launcher
    terminates every running job's group, then re-raises ``KeyboardInterrupt``
    (SIGINT) or exits with status 128 + the signal number. Returns one
    :class:`JobResult` per command, in the given order; if any failed, ``check``
    raises :class:`JobsFailed` (carrying them) after the report instead.
    """
    with StopSignals() as stop_signals, _progress_stream(progress) as bar_file:
        return _run_parallel(list(commands), stop_signals, poll_s, bar_file, check)


@contextlib.contextmanager
def _progress_stream(progress: bool = True) -> Iterator[Optional[TextIO]]:
    """Where the progress bar goes per ``DOMAINBED_PARALLEL_PROGRESS`` (None: no bar).

    ``stderr`` (default); ``tty``: this process's terminal if it has one (else stderr),
    so a bar stays visible while stdout and stderr go to a log; ``none``: no bar."""
    mode = (env(ENV_PREFIX_PARALLEL + "PROGRESS") or "stderr").lower()
    if not progress or mode in ("none", "off", "0", "no", "false"):
        yield None
    elif mode == "stderr":
        yield sys.stderr
    elif mode == "tty":
        try:
            terminal = open("/dev/tty", "w")  # noqa: SIM115 - closed below
        except OSError:  # no controlling terminal (cron, nohup, CI)
            yield sys.stderr
        else:
            with terminal:
                yield terminal
    else:
        raise ValueError(f"{ENV_PREFIX_PARALLEL}PROGRESS={mode!r}: use stderr, tty or none")


def _run_parallel(commands: list[str], stop_signals: StopSignals, poll_s: float,
                  bar_file: Optional[TextIO], check: bool) -> list[JobResult]:
    """The body of :func:`parallel_launcher`, with its stop signals installed."""
    import tqdm  # noqa: PLC0415 - DomainBed's sweep needs it anyway

    plan = ParallelPlan.from_env()
    grace = kill_grace()
    log_dir_env = env(ENV_PREFIX_PARALLEL + "LOG_DIR")
    log_dir: Optional[Path] = Path(log_dir_env) if log_dir_env else None

    results = [JobResult(i, c) for i, c in enumerate(commands)]
    pending = deque(range(len(commands)))
    free = list(range(len(plan.slots)))
    running: dict[int, tuple[subprocess.Popen, int, float, object]] = {}
    n_done = n_failed = 0
    where = (f"GPUs {','.join(plan.gpus)} x{len(plan.slots) // len(plan.gpus)}" if plan.gpus
             else f"CPU, {len(plan.slots)} at once")
    bar = tqdm.tqdm(total=len(commands), desc=f"parallel ({where}, {plan.threads} threads)",
                    disable=bar_file is None, file=bar_file)

    def log_path(i: int) -> Path:
        nonlocal log_dir
        out = output_dir_of(commands[i])
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            return Path(out) / "launcher.txt"
        if log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="domainbed_parallel_"))
        log_dir.mkdir(parents=True, exist_ok=True)
        return log_dir / f"job{i:05d}.txt"

    try:
        while pending or running:
            while pending and free:
                with stop_signals.deferred():
                    i, slot = pending.popleft(), free.pop(0)
                    job_env = {**os.environ, **plan.slots[slot]}
                    path = log_path(i)
                    log = open(path, "ab")  # noqa: SIM115 - closed when the job ends
                    proc = start_job(resumable(commands[i]), job_env, log)
                    results[i].log, results[i].env = str(path), dict(plan.slots[slot])
                    running[i] = (proc, slot, time.monotonic(), log)
            for i in [i for i, (p, *_) in running.items() if p.poll() is not None]:
                proc, slot, start, log = running.pop(i)
                log.close()
                free.append(slot)
                results[i].returncode, results[i].seconds = proc.returncode, time.monotonic() - start
                if proc.returncode == 0:
                    n_done += 1
                else:
                    n_failed += 1
                bar.set_postfix(done=n_done, failed=n_failed, refresh=False)
                bar.update(1)
            time.sleep(poll_s)
    except (KeyboardInterrupt, Terminated) as exc:
        with stop_signals.deferred():  # a second Ctrl-C must not cut the cleanup short
            bar.close()
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"got {exc}"
            print(f"\nparallel launcher: {what}; terminating {len(running)} running job(s). "
                  "Nothing was marked done or deleted: `python -m domainbed_surgery.scripts."
                  "sweep launch` again continues them from their last resume state.",
                  file=sys.stderr)
            kill_groups([proc for proc, *_ in running.values()], grace)
            for _, _, _, log in running.values():
                log.close()
        exit_on(exc)
        raise
    bar.close()
    n_failed = _report(results)
    if check and n_failed:
        raise JobsFailed("parallel", n_failed, results)
    return results


def _report(results: list[JobResult]) -> int:
    """Print how many jobs succeeded and list the failed ones; return how many failed."""
    failed = [r for r in results if r.returncode not in (0, None)]
    ok = sum(r.ok for r in results)
    print(f"parallel launcher: {ok} succeeded, {len(failed)} failed.", file=sys.stderr)
    for r in failed:
        print(f"  FAILED (exit code {r.returncode}): {r.command}\n"
              f"    err.txt: {r.err_txt or '-'}\n    launcher log: {r.log}", file=sys.stderr)
    return len(failed)


