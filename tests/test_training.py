"""Training that stops and continues (domainbed_surgery.training): same batches, same records.

Known answers come from DomainBed itself: its ``InfiniteDataLoader`` for the batch order
and its ``train.py`` for the records of an uninterrupted run; an interrupted-and-continued
run must write exactly those records (step_time, a wall time, aside), each once.
"""

from __future__ import annotations

import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = json.dumps({"batch_size": 8})


# -- the loaders: DomainBed's order, and a state to continue it --------------------------------
def _training_draws():
    """What a training step draws from the global generators between two batches."""
    torch.rand(3)
    np.random.rand()
    random.random()


def _batches(loader, n):
    it = iter(loader)
    out = []
    for _ in range(n):
        x, y = next(it)
        out.append(y.tolist())
        _training_draws()
    return out, it


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_resumable_loader_matches_domainbed_and_continues(domainbed, num_workers, weighted):
    """Same batches as DomainBed's InfiniteDataLoader (13 examples, batches of 4: passes of 3
    batches, a seed drawn per pass), and a loader rebuilt from the state after 5 batches,
    with the global generators of that moment, gives the next 9 exactly."""
    from domainbed.lib.fast_data_loader import InfiniteDataLoader

    from domainbed_surgery.training import state as resume_state
    from domainbed_surgery.training.loaders import ResumableInfiniteLoader

    data = torch.utils.data.TensorDataset(torch.zeros(13, 1), torch.arange(13))
    weights = torch.linspace(1, 2, 13) if weighted else None
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected, _ = _batches(InfiniteDataLoader(data, weights, 4, num_workers), 14)

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    loader = ResumableInfiniteLoader(data, weights, 4, num_workers)
    first, it = _batches(loader, 5)
    saved = json.loads(json.dumps(loader.state_dict()))  # plain data
    rng = resume_state.rng_state()
    rest_original = [next(it)[1].tolist() for _ in range(1)]
    assert first + rest_original == expected[:6]

    torch.manual_seed(123)  # whatever happens while the run is rebuilt
    continued = ResumableInfiniteLoader(data, weights, 4, num_workers, state=saved)
    resume_state.set_rng_state(rng)
    rest, _ = _batches(continued, 9)
    assert first + rest == expected


# -- the train loop against DomainBed's train.py ----------------------------------------------
def run_module(module, args, env, cwd, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(folder: Path) -> list[dict]:
    """The records of a run, without what may differ between runs (wall time, folder)."""
    out = []
    for line in (folder / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("step_time")
        record["args"].pop("output_dir")
        out.append(record)
    return out


def train_args(algorithm, hparams, out, extra=()):
    return ["--dataset", "RotatedDigits", "--algorithm", algorithm, "--test_envs", "0",
            "--steps", "8", "--checkpoint_freq", "3", "--seed", "5", "--trial_seed", "1",
            "--hparams", json.dumps(hparams), "--output_dir", str(out), "--skip_model_save",
            *extra]


#: Runs our train loop with a test hook: at the given ``update`` call the process sends
#: itself SIGTERM (a stop after that step) or deletes its folder and makes it again with
#: one file (DomainBed's delete_incomplete and a relaunch's first step), or at the given
#: resume save it is SIGKILLed before saving (a crash between a record and its state).
INTERRUPTED = """
import os, shutil, signal, sys
from domainbed_surgery import register
register()
from domainbed import algorithms
from domainbed_surgery.training import loop, state
mode, at = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}
if mode in ("sigterm_at_update", "replace_folder_at_update", "sigterm_twice_at_update"):
    cls = algorithms.get_algorithm_class(sys.argv[3])
    update = cls.update
    def counted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == at and mode == "sigterm_at_update":
            os.kill(os.getpid(), signal.SIGTERM)
        if calls["n"] == at and mode == "sigterm_twice_at_update":
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
            os.kill(os.getpid(), signal.SIGTERM)
        if calls["n"] == at and mode == "replace_folder_at_update":
            out = sys.argv[sys.argv.index("--output_dir") + 1]
            shutil.rmtree(out)
            os.makedirs(out)
            open(os.path.join(out, "other_run"), "w").close()
        return update(self, *a, **k)
    cls.update = counted
else:
    save = state.save
    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return save(*a, **k)
    state.save = crashing
sys.exit(loop.main(sys.argv[4:]))
"""


def run_interrupted(mode, at, algorithm, args, env, cwd):
    return subprocess.run([sys.executable, "-c", INTERRUPTED, mode, str(at), algorithm, *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,hparams,extra", [
    ("AgrRand", {"batch_size": 8}, ()),
    ("GroupDRO", {"batch_size": 8, "class_balanced": True},
     ("--task", "domain_adaptation", "--uda_holdout_fraction", "0.3")),
])
def test_interrupted_and_continued_run_writes_domainbed_records(domainbed, subprocess_env,
                                                                tmp_path, algorithm, hparams,
                                                                extra):
    """DomainBed's train.py gives the reference (8 steps, records at 0, 3, 6, 7). Ours: stopped
    by SIGTERM during step 4 (a mid-interval resume state), continued and killed outright
    between the record of step 6 and its resume state, continued to the end: the same
    records, each once, and ``done``. AgrRand draws from its own generator; GroupDRO keeps
    its ``q``, with class-balanced (weighted) sampling and a domain-adaptation loader."""
    reference = tmp_path / "reference"
    run_module("domainbed.scripts.train", train_args(algorithm, hparams, reference, extra),
               subprocess_env, tmp_path)
    expected = records(reference)
    assert [r["step"] for r in expected] == [0, 3, 6, 7]

    ours = tmp_path / "ours"
    args = train_args(algorithm, hparams, ours, extra)
    first = run_interrupted("sigterm_at_update", 5, algorithm, args, subprocess_env, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert "a resume state at step 5 is saved" in first.stdout  # DomainBed tees stderr there
    assert [r["step"] for r in records(ours)] == [0, 3]
    second = run_interrupted("sigkill_at_save", 1, algorithm, args, subprocess_env, tmp_path)
    assert second.returncode == -signal.SIGKILL
    assert [r["step"] for r in records(ours)] == [0, 3, 6]  # written, its state not saved
    third = run_module("domainbed_surgery.scripts.train", args, subprocess_env, tmp_path)
    assert "Resuming at step 5" in third.stdout
    assert records(ours) == expected
    assert (ours / "done").exists() and not (ours / "resume.pt").exists()
    again = run_module("domainbed_surgery.scripts.train", args, subprocess_env, tmp_path)
    assert "already done" in again.stderr and records(ours) == expected


def test_a_repeated_sigterm_still_lets_the_run_save_its_state(domainbed, subprocess_env, tmp_path):
    """Under Slurm, scancel signals every process of the job step and our job guard then
    signals its process group: the run gets SIGTERM twice. The second must not kill it
    before its resume state is written (it did: a relaunch then started over)."""
    out = tmp_path / "run"
    args = train_args("ERM", {"batch_size": 8}, out)
    first = run_interrupted("sigterm_twice_at_update", 2, "ERM", args, subprocess_env, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert "a resume state at step 2 is saved" in first.stdout
    again = run_module("domainbed_surgery.scripts.train", args, subprocess_env, tmp_path)
    assert "Resuming at step 2" in again.stdout and (out / "done").exists()


def test_a_run_whose_folder_is_deleted_writes_nothing_more(domainbed, subprocess_env, tmp_path):
    """DomainBed's own delete_incomplete removes a running job's folder and a relaunch makes
    it again: the old run stops at its next write (exit 75) and leaves the new folder alone
    (no record, no state, no ``done`` of its own there)."""
    out = tmp_path / "run"
    args = train_args("ERM", {"batch_size": 8}, out)
    proc = run_interrupted("replace_folder_at_update", 2, "ERM", args, subprocess_env, tmp_path)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "was deleted while this run trained" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other_run"]


# -- the whole algorithm object carries every state ---------------------------------------------
def test_every_algorithm_continues_bit_for_bit_after_its_state_is_saved(domainbed):
    """Every algorithm that runs on a CPU (DomainBed's and ours): an update, then the resume
    state's pickling (torch.save with our pickler) and a reload; two more updates from the
    same global generators give the same values and parameters as the original."""
    from domainbed import algorithms, datasets, hparams_registry

    from domainbed_surgery.training import state as resume_state

    needs_cuda = {"TRM", "RDM"}  # DomainBed's: .cuda() in their update
    dataset = datasets.RotatedDigits(None, [0], {})
    g = torch.Generator().manual_seed(1)

    def minibatches():
        out = []
        for env in (1, 2, 3):
            idx = torch.randint(len(dataset[env]), (4,), generator=g)
            out.append((torch.stack([dataset[env][i][0] for i in idx]),
                        torch.tensor([dataset[env][i][1] for i in idx])))
        return out

    for name in algorithms.ALGORITHMS:
        if name in needs_cuda:
            continue
        hparams = hparams_registry.default_hparams(name, "RotatedDigits")
        hparams["batch_size"] = 4
        torch.manual_seed(0)
        algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape,
                                                         dataset.num_classes, 3, hparams)
        algorithm.update(minibatches(), None)
        buffer = io.BytesIO()
        torch.save(algorithm, buffer, pickle_module=resume_state.PICKLE)
        buffer.seek(0)
        reloaded = torch.load(buffer, weights_only=False, pickle_module=resume_state.PICKLE)
        batches = [minibatches() for _ in range(2)]
        rng = resume_state.rng_state()
        original = [algorithm.update(b, None) for b in batches]
        resume_state.set_rng_state(rng)
        continued = [reloaded.update(b, None) for b in batches]
        assert continued == original, name
        for (key, a), b in zip(algorithm.state_dict().items(), reloaded.state_dict().values()):
            assert torch.equal(a, b), (name, key)


# -- one run per folder --------------------------------------------------------------------------
def test_a_second_run_in_a_busy_folder_stops(domainbed, tmp_path, capsys):
    from domainbed_surgery.launch.folders import FolderLock
    from domainbed_surgery.training import loop

    folder = tmp_path / "run"
    with FolderLock(folder).acquire():
        status = loop.main(train_args("ERM", {"batch_size": 8}, folder))
    assert status == 75
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "not starting a second run" in err
    assert not (folder / "results.jsonl").exists()


def test_a_folder_of_other_arguments_is_refused(domainbed, tmp_path, capsys):
    from domainbed_surgery.training import loop

    folder = tmp_path / "run"
    folder.mkdir()
    line = json.dumps({"step": 0, "args": {"algorithm": "ERM", "seed": 4, "output_dir": "x"}})
    (folder / "results.jsonl").write_text(line + "\n")
    status = loop.main(train_args("ERM", {"batch_size": 8}, folder))
    assert status == 2
    assert "seed: 4 there, 5 here" in capsys.readouterr().err
    assert (folder / "results.jsonl").read_text() == line + "\n"
