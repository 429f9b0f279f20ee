"""Who owns a job folder: the training process that holds its lock, or the Slurm job submitted for it.

A sweep's job folder (``--output_dir`` of one train command) must never be deleted or
given to a second job while its job is alive. Two records say so:

- ``train.lock``: held (``flock``) by the training process for as long as it runs, with
  its host, pid and Slurm job id written inside. The kernel drops the lock when the
  process dies, however it dies (``kill -9`` included).
- ``slurm_job``: written by the ``slurm`` launcher when it submits the folder's job (the
  array task id, e.g. ``1234_7``). While ``squeue`` lists that task (pending, running,
  requeued, completing...) the folder is the job's, even before it starts.

:func:`owner` / :func:`owners` read both; :class:`FolderLock` is the lock itself (also
taken for a moment by whoever deletes a folder). Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

LOCK_FILE = "train.lock"
SLURM_JOB_FILE = "slurm_job"


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """An exclusive ``flock`` on ``FOLDER/train.lock``, kept until :meth:`release` or exit.

    :meth:`acquire` retries for ``wait_s`` seconds (a deleter holds it for milliseconds),
    then raises :class:`FolderBusy` naming the holder. A lock file replaced or removed
    while we waited (the folder was deleted and made again) is opened afresh.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self, wait_s: float = 10.0, info: Optional[dict] = None) -> "FolderLock":
        deadline = time.monotonic() + wait_s
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise FolderBusy(f"{self.folder} is in use by {holder(self.folder) or 'another process'}"
                                     ) from None
                time.sleep(0.1)
                continue
            try:  # still the file at the path (not one a deleter removed meanwhile)?
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info if info is not None else process_info()).encode())
        return self

    def held(self) -> bool:
        """Whether the lock is still the folder's: the folder was not deleted (and perhaps
        made again for another run) since :meth:`acquire`."""
        if self._fd is None:
            return False
        try:
            mine, there = os.fstat(self._fd), os.stat(self.path)
        except OSError:
            return False
        return (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def process_info() -> dict:
    """This process as a lock holder: host, pid, and its Slurm job if it runs in one."""
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    job = slurm_task_of_environment()
    if job:
        info["slurm_job"] = job
    return info


def slurm_task_of_environment() -> Optional[str]:
    """``ARRAYID_TASK`` (or the job id) of the Slurm job this process runs in, else None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def locked(folder: str | os.PathLike) -> bool:
    """Whether a live process holds ``folder``'s lock (never creates the lock file)."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def holder(folder: str | os.PathLike) -> Optional[str]:
    """Words for the process holding ``folder``'s lock, or None if nobody does."""
    if not locked(folder):
        return None
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return "a training process"
    words = f"a training process (pid {info.get('pid')} on {info.get('host')}"
    if info.get("slurm_job"):
        words += f", Slurm job {info['slurm_job']}"
    return words + ")"


# -- the Slurm job of a folder -----------------------------------------------------------------
def claim_for_slurm(folder: str | os.PathLike, task: str) -> None:
    """Record that Slurm array task ``task`` (``1234_7``) was submitted for ``folder``."""
    path = Path(folder) / SLURM_JOB_FILE
    tmp = path.with_name(f".{SLURM_JOB_FILE}.{os.getpid()}")
    tmp.write_text(task + "\n")
    os.replace(tmp, path)


def slurm_claim(folder: str | os.PathLike) -> Optional[str]:
    """The Slurm task recorded for ``folder`` by :func:`claim_for_slurm`, or None."""
    try:
        return (Path(folder) / SLURM_JOB_FILE).read_text().strip() or None
    except OSError:
        return None


#: ``squeue_states(tasks)`` -> {task: state} for the tasks Slurm still lists; raises
#: ``RuntimeError`` if Slurm cannot be asked. Replaced by tests.
SqueueStates = Callable[[list], dict]


def owners(folders: Iterable[str | os.PathLike],
           squeue_states: Optional[SqueueStates] = None) -> dict:
    """{folder: words for its live owner} for the folders whose job is alive (one ``squeue``).

    A folder is alive if a process holds its lock, or if the Slurm task recorded in it is
    still listed by ``squeue``. A recorded task that cannot be checked (no Slurm here)
    counts as alive: deleting a running job's folder is the one thing not to risk.
    """
    folders = [Path(f) for f in folders]
    found = {}
    claims = {}
    for folder in folders:
        words = holder(folder)
        if words:
            found[str(folder)] = words
        else:
            task = slurm_claim(folder)
            if task:
                claims[str(folder)] = task
    if claims:
        if squeue_states is None:
            from .cluster import squeue_states  # noqa: PLC0415 - only when a claim exists
        try:
            states = squeue_states(sorted(set(claims.values())))
        except RuntimeError as exc:
            for folder, task in claims.items():
                found[folder] = f"Slurm job {task} (its state is unknown: {exc})"
        else:
            for folder, task in claims.items():
                if task in states:
                    found[folder] = f"Slurm job {task} ({states[task]})"
    return found


def owner(folder: str | os.PathLike, squeue_states: Optional[SqueueStates] = None) -> Optional[str]:
    """Words for ``folder``'s live owner (see :func:`owners`), or None."""
    return owners([folder], squeue_states).get(str(Path(folder)))


def delete_unowned(folder: str | os.PathLike) -> Optional[str]:
    """Delete ``folder`` unless a process holds its lock (checked under the lock); return
    the holder's words if it was kept. The Slurm claim is the caller's to check."""
    folder = Path(folder)
    if not folder.exists():
        return None
    lock = FolderLock(folder)
    try:
        lock.acquire(wait_s=0.0, info={"host": socket.gethostname(), "pid": os.getpid(),
                                        "deleting": True})
    except FolderBusy:
        return holder(folder) or "a training process"
    try:
        shutil.rmtree(folder)
    finally:
        lock.release()
    return None
