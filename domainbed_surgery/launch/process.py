"""Process control shared by both launchers: settings, stop signals, starting and ending jobs.

One place for each policy: which signals stop a launcher and how (:class:`StopSignals`,
:data:`STOP_SIGNALS`), which ones tell a job to save its state and stop
(:data:`NOTICE_SIGNALS`, :data:`CHECKPOINT_SIGNAL`), how long a job may take to end after
SIGTERM (:func:`kill_grace`) or to save its state (:data:`SAVE_WAIT_S`), how a job is started
so that it dies with its launcher (:func:`start_job`, under :mod:`.jobguard`) and how a
group of jobs is ended (:func:`kill_groups`). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

#: Seconds a job has to end after SIGTERM before it is SIGKILLed (parallel launcher,
#: Slurm job bodies and the job guard all read this one setting).
KILL_GRACE_ENV = "DOMAINBED_PARALLEL_KILL_GRACE"
DEFAULT_KILL_GRACE = 5.0
#: Longest wait (s) for a Slurm job's training to save its state after
#: :data:`CHECKPOINT_SIGNAL`, before the task is requeued (submitit signals 90 s before the end).
SAVE_WAIT_S = 60.0

#: Signals that stop a launcher (its jobs are ended) and a job guard (its group is ended).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Signals a cluster sends every process of a job before a time limit or at a preemption:
#: the training saves its state and stops after its step; guards and data workers outlive them.
NOTICE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: What a Slurm job body sends its command to make it save its state and stop (submitit's).
CHECKPOINT_SIGNAL = signal.SIGUSR2


# -- settings from the environment ---------------------------------------------------------
def env(name: str, default: Optional[str] = None) -> Optional[str]:
    """The stripped value of environment variable ``name``, or ``default`` if unset."""
    value = os.environ.get(name)
    return default if value is None else value.strip()


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """An integer setting; ``ValueError`` naming the variable if it is not one or too small."""
    return _env_number(name, default, int, "an integer", minimum)


def kill_grace() -> float:
    """``DOMAINBED_PARALLEL_KILL_GRACE`` seconds (default 5)."""
    return _env_number(KILL_GRACE_ENV, DEFAULT_KILL_GRACE, float, "a number of seconds", 0)


def _env_number(name: str, default, kind, what: str, minimum):
    """Setting ``name`` read as ``kind``: ``default`` if unset or empty, else a number of at
    least ``minimum``; ``ValueError`` naming the variable otherwise."""
    raw = env(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {what}") from None
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


DOMAINBED_TRAIN = "domainbed.scripts.train"
#: The train entry point our launchers run: DomainBed's training that continues where it
#: stopped (``domainbed_surgery.training``); same arguments, same records.
RESUMABLE_TRAIN = "domainbed_surgery.scripts.train"
_TRAIN_COMMAND = re.compile(r"^(\S+\s+-m\s+)" + re.escape(DOMAINBED_TRAIN) + r"(?=\s|$)")


def resumable(command: str) -> str:
    """DomainBed's train command as our launchers run it: ``exec PYTHON -m
    domainbed_surgery.scripts.train ARGS`` for ``PYTHON -m domainbed.scripts.train ARGS``
    (``exec``: the shell becomes the training process, so the signals a cluster sends a
    job reach it and nothing in between); any other command unchanged."""
    if not _TRAIN_COMMAND.match(command) or not _simple(command):
        return command
    return "exec " + _TRAIN_COMMAND.sub(r"\g<1>" + RESUMABLE_TRAIN, command, count=1)


def _simple(command: str) -> bool:
    """Whether ``command`` is one simple shell command (no operator outside quotes)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        return not any(tok and set(tok) <= set("();<>|&") for tok in lexer)
    except ValueError:
        return False


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


# -- stop signals ----------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM or SIGHUP reached the launcher (what ``KeyboardInterrupt`` is for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_on(exc: BaseException) -> None:
    """Leave a launcher after a stop: Ctrl-C re-raises ``KeyboardInterrupt``, the others exit
    with status 128 + the signal number (``raise`` inside the ``except`` that caught it)."""
    if isinstance(exc, Terminated):
        raise SystemExit(128 + exc.signum) from None


class StopSignals:
    """While a launcher runs, SIGTERM/SIGHUP raise :class:`Terminated` and Ctrl-C
    ``KeyboardInterrupt``, except inside :meth:`deferred`, which holds them back until
    it ends (so a job is never started without being tracked, nor cleanup cut short).

    Handlers are only installed from the main thread. Ctrl-C is handled if Python's
    default handler has it; an *ignored* SIGINT (a sweep started as ``nohup ... &``
    inherits one) is left ignored, unless ``handle_ignored_sigint``: then it is handled
    too while the block runs (submitit's local executor stops its jobs with SIGINT,
    and jobs inheriting an ignored SIGINT would outlive that). Everything is restored
    on exit.
    """

    def __init__(self, handle_ignored_sigint: bool = False) -> None:
        self._handle_ignored_sigint = handle_ignored_sigint
        self._previous: dict = {}
        self._depth = 0
        self._pending: Optional[int] = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            if sig == signal.SIGINT:
                current = signal.getsignal(sig)
                ignored = current is signal.SIG_IGN and self._handle_ignored_sigint
                if current is not signal.default_int_handler and not ignored:
                    continue
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

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


# -- starting and ending jobs --------------------------------------------------------------
def start_job(command: str, environment: dict, log=None) -> subprocess.Popen:
    """Start ``command`` under :mod:`.jobguard` in a new session, so that it dies with us.

    With ``log``, the job's stdout and stderr go there; else they are ours."""
    guard = [sys.executable, "-m", "domainbed_surgery.launch.jobguard", str(os.getpid()), command]
    output = {} if log is None else {"stdout": log, "stderr": subprocess.STDOUT}
    return subprocess.Popen(guard, env=environment, stdin=subprocess.DEVNULL,
                            start_new_session=True, **output)


def kill_groups(procs: Sequence[subprocess.Popen], grace: Optional[float] = None) -> None:
    """SIGTERM the jobs' process groups, SIGKILL what outlives ``grace`` seconds
    (default :func:`kill_grace`)."""
    grace = kill_grace() if grace is None else grace

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
