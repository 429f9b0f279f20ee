"""Command launchers for DomainBed's sweep: ``parallel`` (one machine) and ``slurm`` (submitit).

DomainBed's ``sweep.py`` hands a launcher the list of shell commands
(``python -m domainbed.scripts.train ... --output_dir DIR``) and knows nothing else
about it; its CLI has no place for launcher options, so they come from environment
variables. Both launchers are added to ``domainbed.command_launchers.REGISTRY`` by
:mod:`..plugin.registration`, so ``sweep launch --command_launcher parallel`` just works.

Neither launcher writes DomainBed's ``done`` file or deletes anything: a job that
fails or is interrupted stays *Incomplete* for ``sweep.py``, so
``sweep delete_incomplete`` followed by ``sweep launch`` resumes a sweep.

``parallel`` -- run the commands concurrently on this machine
---------------------------------------------------------------
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

It shows a tqdm bar with done/failed counts; a failed job does not stop the
others, and failures are listed at the end (command, exit code, ``err.txt``), after
which the launcher raises :class:`JobsFailed` so that the sweep exits with status 1.
Ctrl-C, SIGTERM (``timeout``, a cluster's job limit) and SIGHUP terminate the running
jobs' process groups (SIGTERM, then SIGKILL after ``DOMAINBED_PARALLEL_KILL_GRACE``
seconds, default 5); then Ctrl-C re-raises ``KeyboardInterrupt`` and the others exit
with status 128 + the signal number. If the sweep is killed outright (SIGKILL, out of
memory), each job still dies with it: it runs under a small guard
(:mod:`domainbed_surgery.launch.jobguard`) that the kernel signals when the launcher dies.

``slurm`` -- submit the commands as a Slurm job array with submitit
----------------------------------------------------------------------
``DOMAINBED_SLURM_PARTITION`` (default: the cluster's default partition),
``DOMAINBED_SLURM_TIME`` (minutes, default 1440), ``DOMAINBED_SLURM_GPUS``
(per job, default 1), ``DOMAINBED_SLURM_CPUS`` (per job, default 4),
``DOMAINBED_SLURM_MEM_GB`` (default 32), ``DOMAINBED_SLURM_ARRAY_PARALLELISM``
(array tasks running at once, default 256), ``DOMAINBED_SLURM_LOG_DIR``
(submitit's folder, default ``./submitit_logs``), ``DOMAINBED_SLURM_CLUSTER``
(submitit's ``cluster``: unset = Slurm, an error if there is no ``sbatch``;
``local`` = run the jobs here as subprocesses, at most
``DOMAINBED_SLURM_ARRAY_PARALLELISM`` at once, the launcher staying until they end;
``debug`` = one after the other in this process; used by the tests),
``DOMAINBED_SLURM_WAIT`` (``1``: block until all jobs end and list failures;
default ``1`` for ``local``/``debug``, ``0`` for Slurm, where the launcher returns
after submission and prints the job ids). When it waits, failures are listed and the
sweep exits with status 1, as with ``parallel``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TextIO

ENV_PREFIX_PARALLEL = "DOMAINBED_PARALLEL_"
ENV_PREFIX_SLURM = "DOMAINBED_SLURM_"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# -- helpers -------------------------------------------------------------------------
def _env(name: str, default: Optional[str] = None) -> Optional[str]:
    value = os.environ.get(name)
    return default if value is None else value.strip()


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = _env(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def available_cores() -> int:
    """CPUs this process may run on (respects affinity / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def output_dir_of(command: str) -> Optional[str]:
    """The ``--output_dir`` of a DomainBed train command, or None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--output_dir" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--output_dir="):
            return word.split("=", 1)[1]
    return None


def _gpu_ids() -> list[str]:
    raw = _env(ENV_PREFIX_PARALLEL + "GPUS")
    if raw is None:
        raw = _env("CUDA_VISIBLE_DEVICES")
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


class JobsFailed(SystemExit):
    """Raised by a launcher, after listing the failures, when some jobs failed.

    DomainBed's ``sweep.py`` ignores what a launcher returns; a ``SystemExit`` with a
    message makes it exit with status 1, so scripted pipelines stop. ``results`` holds
    what the launcher would have returned.
    """

    def __init__(self, launcher: str, n_failed: int, results: list) -> None:
        super().__init__(f"{launcher} launcher: {n_failed} of {len(results)} job(s) failed "
                         "(listed above); exiting with status 1.")
        self.results = results


# -- parallel ------------------------------------------------------------------------
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
            per_gpu = _env_int(ENV_PREFIX_PARALLEL + "PER_GPU", 1, minimum=1)
            slots = [{"CUDA_VISIBLE_DEVICES": g} for _ in range(per_gpu) for g in gpus]
        else:
            jobs = _env_int(ENV_PREFIX_PARALLEL + "JOBS", max(1, cores // 2), minimum=1)
            slots = [{} for _ in range(jobs)]
        threads = _env_int(ENV_PREFIX_PARALLEL + "THREADS", max(1, cores // len(slots)),
                           minimum=1)
        for slot in slots:
            slot.update({var: str(threads) for var in THREAD_VARS})
        return cls(slots=slots, threads=threads, gpus=gpus)


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached the launcher (what ``KeyboardInterrupt`` is for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """While the launcher runs, SIGTERM/SIGHUP raise :class:`Terminated` and Ctrl-C
    ``KeyboardInterrupt``, except inside :meth:`deferred`, which holds them back until
    it ends (so a job is never started without being tracked, nor cleanup cut short).
    Handlers are only installed from the main thread, and Ctrl-C only if Python's
    default handler has it."""

    def __init__(self) -> None:
        self._previous: dict = {}
        self._depth = 0
        self._pending: Optional[int] = None

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                if sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        if self._depth:
            self._pending = self._pending or signum
        else:
            self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold stop signals back for the duration of the block; raise the first one after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                self._raise(signum)


def _kill_groups(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM the jobs' process groups, SIGKILL what outlives ``grace`` seconds."""
    def signal_all(sig: int) -> None:
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    signal_all(signal.SIGKILL)  # the guards are gone or stuck; nothing of a group survives
    for proc in procs:
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass


def _start_job(command: str, env: dict, log=None) -> subprocess.Popen:
    """Start ``command`` under :mod:`.jobguard` in a new session, so that it dies with us.

    With ``log``, the job's stdout and stderr go there; else they are ours."""
    guard = [sys.executable, "-m", "domainbed_surgery.launch.jobguard", str(os.getpid()), command]
    output = {} if log is None else {"stdout": log, "stderr": subprocess.STDOUT}
    return subprocess.Popen(guard, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            **output)


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
    with _StopSignals() as stop_signals, _progress_stream(progress) as bar_file:
        return _run_parallel(list(commands), stop_signals, poll_s, bar_file, check)


@contextlib.contextmanager
def _progress_stream(progress: bool = True) -> Iterator[Optional[TextIO]]:
    """Where the progress bar goes per ``DOMAINBED_PARALLEL_PROGRESS`` (None: no bar).

    ``stderr`` (default); ``tty``: this process's terminal if it has one (else stderr),
    so a bar stays visible while stdout and stderr go to a log; ``none``: no bar."""
    mode = (_env(ENV_PREFIX_PARALLEL + "PROGRESS") or "stderr").lower()
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


def _run_parallel(commands: list[str], stop_signals: _StopSignals, poll_s: float,
                  bar_file: Optional[TextIO], check: bool) -> list[JobResult]:
    """The body of :func:`parallel_launcher`, with its stop signals installed."""
    import tqdm  # noqa: PLC0415 - DomainBed's sweep needs it anyway

    plan = ParallelPlan.from_env()
    grace = float(_env(ENV_PREFIX_PARALLEL + "KILL_GRACE", "5"))
    log_dir_env = _env(ENV_PREFIX_PARALLEL + "LOG_DIR")
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
                    env = {**os.environ, **plan.slots[slot]}
                    path = log_path(i)
                    log = open(path, "ab")  # noqa: SIM115 - closed when the job ends
                    proc = _start_job(commands[i], env, log)
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
                  "Nothing was marked done or deleted: run `sweep delete_incomplete` and "
                  "`sweep launch` again to resume.", file=sys.stderr)
            _kill_groups([proc for proc, *_ in running.values()], grace)
            for _, _, _, log in running.values():
                log.close()
        if isinstance(exc, Terminated):
            raise SystemExit(128 + exc.signum) from None
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


# -- slurm (submitit) ------------------------------------------------------------------
class ShellCommand:
    """A picklable job body: run one shell command; raise if it exits non-zero.

    The command runs under :mod:`.jobguard`, so its processes end with the task.

    Lighter than ``submitit.helpers.CommandFunction``, which keeps the whole stdout
    in memory and pickles it back as the result; DomainBed's train.py already writes
    its own ``out.txt``/``err.txt``, and submitit keeps the job's stdout/stderr logs.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    def __call__(self) -> int:
        guarded = _start_job(self.command, dict(os.environ), None)  # dies with this task
        try:
            code = guarded.wait()
        except BaseException:  # the task is being stopped: take the job's processes along
            _kill_groups([guarded], float(_env(ENV_PREFIX_PARALLEL + "KILL_GRACE", "5")))
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, self.command)
        return code

    def __repr__(self) -> str:
        return f"ShellCommand({self.command!r})"


def slurm_parameters() -> dict:
    """submitit ``update_parameters`` keywords from the ``DOMAINBED_SLURM_*`` variables."""
    params = {
        "name": "domainbed",
        "timeout_min": _env_int(ENV_PREFIX_SLURM + "TIME", 24 * 60, minimum=1),
        "gpus_per_node": _env_int(ENV_PREFIX_SLURM + "GPUS", 1),
        "cpus_per_task": _env_int(ENV_PREFIX_SLURM + "CPUS", 4, minimum=1),
        "mem_gb": _env_int(ENV_PREFIX_SLURM + "MEM_GB", 32, minimum=1),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": _env_int(ENV_PREFIX_SLURM + "ARRAY_PARALLELISM", 256,
                                            minimum=1),
    }
    partition = _env(ENV_PREFIX_SLURM + "PARTITION")
    if partition:
        params["slurm_partition"] = partition
    return params


class SlurmNotFound(SystemExit):
    """``slurm`` was asked for, but this machine cannot submit to Slurm."""


def slurm_cluster(cluster: Optional[str] = None) -> str:
    """The submitit cluster to use: ``cluster``, else ``DOMAINBED_SLURM_CLUSTER``, else
    ``"slurm"`` if ``sbatch`` is on PATH; otherwise :class:`SlurmNotFound`.

    submitit's own auto-detection would fall back to running every job on this machine
    at once, which on a login node means hundreds of training jobs."""
    cluster = cluster or _env(ENV_PREFIX_SLURM + "CLUSTER") or None
    if cluster is not None:
        return cluster
    if shutil.which("sbatch") is None:
        raise SlurmNotFound(
            "slurm launcher: no Slurm here (no `sbatch` on PATH), so nothing was submitted. "
            "Run the sweep where Slurm is available (a login node), use "
            "--command_launcher parallel to run the jobs on this machine, or set "
            "DOMAINBED_SLURM_CLUSTER=local to run them here through submitit's local "
            "executor (DOMAINBED_SLURM_ARRAY_PARALLELISM at once).")
    return "slurm"


def _submit_throttled(executor, commands: Sequence[str], limit: int, jobs: list,
                      poll_s: float = 0.5) -> None:
    """Submit one job per command into ``jobs``, at most ``limit`` unfinished at once
    (submitit's local executor ignores ``slurm_array_parallelism`` and would start them all)."""
    running: list = []
    for command in commands:
        while len(running) >= limit:
            running = [job for job in running if not job.done()]
            if len(running) >= limit:
                time.sleep(poll_s)
        jobs.append(executor.submit(ShellCommand(command)))
        running.append(jobs[-1])


def slurm_launcher(commands: Sequence[str], *, cluster: Optional[str] = None,
                   wait: Optional[bool] = None,
                   executor_factory: Optional[Callable[..., object]] = None) -> list:
    """Submit ``commands`` as one submitit job array (see the module docstring).

    ``cluster`` (default: :func:`slurm_cluster`) is submitit's: ``"slurm"``, or
    ``"local"``/``"debug"`` to run here; without Slurm and without one of those, a
    :class:`SlurmNotFound` error. ``executor_factory(folder=..., cluster=...)`` replaces
    ``submitit.AutoExecutor`` (for tests or custom clusters). Returns the submitit jobs,
    in command order; with ``wait`` (always for ``local``, which runs at most
    ``DOMAINBED_SLURM_ARRAY_PARALLELISM`` jobs at once) it blocks until they end, lists
    the failures and raises :class:`JobsFailed` (carrying the jobs) if any.
    """
    commands = list(commands)
    if not commands:
        return []
    cluster = slurm_cluster(cluster)
    import submitit  # noqa: PLC0415 - optional dependency, only for this launcher

    if cluster == "local":
        wait = True
    if wait is None:
        default_wait = "1" if cluster in ("local", "debug") else "0"
        wait = _env(ENV_PREFIX_SLURM + "WAIT", default_wait) not in ("0", "false", "no", "")
    folder = Path(_env(ENV_PREFIX_SLURM + "LOG_DIR") or "submitit_logs") / "%j"
    factory = executor_factory or submitit.AutoExecutor
    executor = factory(folder=folder, cluster=cluster)
    params = slurm_parameters()
    executor.update_parameters(**params)
    jobs: list = []
    with _sigint_not_ignored(cluster == "local"), _StopSignals() as stop_signals:
        try:
            if cluster == "local":
                limit = params["slurm_array_parallelism"]
                print(f"slurm launcher: running {len(commands)} job(s) on this machine "
                      f"(DOMAINBED_SLURM_CLUSTER=local), at most {limit} at once",
                      file=sys.stderr)
                _submit_throttled(executor, commands, limit, jobs)
            else:
                with executor.batch():
                    jobs.extend(executor.submit(ShellCommand(c)) for c in commands)
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            print(f"slurm launcher: submitted {len(jobs)} job(s) ({', '.join(ids)}); "
                  f"logs in {folder.parent}", file=sys.stderr)
            if wait:
                _wait_and_report(commands, jobs)
        except (KeyboardInterrupt, Terminated) as exc:
            if cluster == "local":
                with stop_signals.deferred():
                    _cancel_local(jobs)
            if isinstance(exc, Terminated):
                raise SystemExit(128 + exc.signum) from None
            raise
    return jobs


@contextlib.contextmanager
def _sigint_not_ignored(active: bool) -> Iterator[None]:
    """Run with SIGINT handled by Python if it was ignored (a sweep started as ``nohup ... &``
    inherits an ignored SIGINT): submitit's local executor stops its jobs with SIGINT, and
    its processes inherit an ignored SIGINT, so they would outlive a cancel."""
    if not active or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cancel_local(jobs: list) -> None:
    """Stop the unfinished jobs of submitit's local executor (their process trees included)."""
    unfinished = [job for job in jobs if not job.done()]
    print(f"\nslurm launcher: stopping {len(unfinished)} running local job(s); nothing was "
          "marked done.", file=sys.stderr)
    for job in unfinished:
        job.cancel()  # submitit's way: SIGINT to the job's controller process


def _wait_and_report(commands: list[str], jobs: list) -> None:
    """Wait for every job, list the failed ones, raise :class:`JobsFailed` if any."""
    failed = []
    for command, job in zip(commands, jobs):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - report every failure, stop none
            failed.append((command, job, exc))
    print(f"slurm launcher: {len(jobs) - len(failed)} succeeded, {len(failed)} failed.",
          file=sys.stderr)
    for command, job, exc in failed:
        out = output_dir_of(command)
        print(f"  FAILED job {job.job_id}: {command}\n"
              f"    err.txt: {os.path.join(out, 'err.txt') if out else '-'}\n"
              f"    submitit log: {job.paths.stderr}\n"
              f"    {_reason(exc)}", file=sys.stderr)
    if failed:
        raise JobsFailed("slurm", len(failed), jobs)


def _reason(exc: BaseException) -> str:
    """The informative line of a submitit failure (its text is the job's whole traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "exit status" in line or "Error" in line:
            return line
    return lines[-1] if lines else repr(exc)


#: Launchers we add to ``domainbed.command_launchers.REGISTRY``.
LAUNCHERS = {"parallel": parallel_launcher, "slurm": slurm_launcher}
