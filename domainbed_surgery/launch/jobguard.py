"""Run one job of the ``parallel`` launcher so that it dies with the launcher.

    python -m domainbed_surgery.launch.jobguard LAUNCHER_PID COMMAND

The launcher starts this guard as each job's direct child, as the leader of a new
session and process group; the guard runs ``COMMAND`` with ``shell=True`` in that group
and exits with its exit status. Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``)
only reaches a *direct* child, not the shell's children (the training script, its data
loader workers, anything run in the background), so it is set on the guard: when the
launcher dies, however it dies (``SIGKILL`` included), the guard gets ``SIGTERM`` and
ends its whole group: ``SIGTERM``, then ``SIGKILL`` after the kill grace
(``DOMAINBED_PARALLEL_KILL_GRACE``, see :func:`.process.kill_grace`). It does the same
on ``SIGTERM``/``SIGINT``/``SIGHUP`` from anyone, and outlives ``SIGUSR1``/``SIGUSR2``.
Where ``prctl`` is missing (not Linux), a thread polls the parent id instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from .process import NOTICE_SIGNALS, STOP_SIGNALS, kill_grace

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _ignore(_signum, _frame) -> None:
    """The guard outlives :data:`.process.NOTICE_SIGNALS` with a handler that does nothing
    (unlike an ignored signal, a handler is reset in the command, which acts on them)."""


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def end_group(child: Optional[subprocess.Popen], grace: float) -> None:
    """SIGTERM this process group (the guard ignores it), SIGKILL all of it after ``grace`` seconds."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # the group's SIGTERM reaches the guard too
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    if child is not None:
        _reap(child.pid, grace)
    os.killpg(0, signal.SIGKILL)  # whatever is left, the guard included


def _reap(pid: int, timeout: float, poll_s: float = 0.02) -> None:
    """Wait up to ``timeout`` seconds for child ``pid`` to end.

    Polls ``os.waitpid`` itself: this runs in a signal handler, possibly while the main
    code sits in ``Popen.wait()`` holding the lock that another ``Popen.wait`` would need."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # already reaped
            return
        time.sleep(poll_s)


def _watch_parent(parent: int, poll_s: float = 0.5) -> None:
    """Fallback without ``prctl``: SIGTERM ourselves once the launcher is gone."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command in this process group; end the group if the launcher dies or we are told to stop."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m domainbed_surgery.launch.jobguard LAUNCHER_PID COMMAND", file=sys.stderr)
        return 2
    parent, command = int(args[0]), args[1]
    grace = kill_grace()
    child: Optional[subprocess.Popen] = None

    def stop(signum, _frame) -> None:
        end_group(child, grace)
        os._exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    for sig in NOTICE_SIGNALS:  # a cluster's time-limit notice is the job's to act on
        signal.signal(sig, _ignore)
    watched = die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the launcher died before the kernel was watching it
        return 128 + signal.SIGTERM
    if not watched:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    child = subprocess.Popen(command, shell=True)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
