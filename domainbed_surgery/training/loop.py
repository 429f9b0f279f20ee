"""DomainBed's training run, step for step, that can stop and continue where it stopped.

``python -m domainbed_surgery.scripts.train`` runs :func:`main`: the arguments are
DomainBed's own (its ``train.py`` builds the parser), and an uninterrupted run does
what ``train.py`` does, in the same order, with the same draws from every random
generator, so it writes the same ``results.jsonl`` (test_training.py checks it value
for value against DomainBed's script). In addition:

- after each record (every ``checkpoint_freq`` steps and the last step) the run saves
  its resume state (:mod:`.state`); a rerun of the same command continues from the
  last one, and an interrupted-and-continued run writes exactly the records of an
  uninterrupted one, each once (``results.jsonl`` is cut back to the records the state
  knows before continuing);
- SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (what Slurm sends at a time limit, a preemption
  or a requeue) stop the run after the current step, with a resume state, and exit with
  status 128 + the signal number; a second SIGINT stops it at once (a repeated SIGTERM,
  which Slurm and our job guard both send, does not: SIGKILL does);
- a run holds its folder's lock (:class:`..launch.folders.FolderLock`) while it runs: a
  second run in the same folder stops with an error instead of writing beside it, and a
  run whose folder was deleted under it (DomainBed's ``delete_incomplete``) stops before
  it writes anything more, rather than into a folder made again for another run;
- a finished folder (``done``) of the same arguments is left as it is (status 0); a
  folder of other arguments is refused.

DomainBed's own ``python -m domainbed.scripts.train`` is unchanged.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import PIL
import torch
import torch.utils.data
import torchvision

from ..launch.folders import FolderBusy, FolderLock
from ..launch.process import NOTICE_SIGNALS
from ..plugin.forward import script_parser
from ..plugin.registration import register
from . import state as resume_state
from .loaders import EvalLoader, ResumableInfiniteLoader

TRAIN_SCRIPT = "domainbed.scripts.train"
#: What stops a run after its current step, with a resume state.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *NOTICE_SIGNALS)


class StopRequest:
    """The first stop signal is remembered (the run stops after its current step, with a
    resume state); a second SIGINT takes Python's default way (Ctrl-C twice). A repeated
    SIGTERM is not fatal: under Slurm every process of the job step gets scancel's SIGTERM
    and our job guard then sends its group another, which used to kill the run while it
    wrote its state; whoever must end it sends SIGKILL after its grace (Slurm's KillWait)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a resume "
                  "state.", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse DomainBed's train arguments and run :func:`train`; return the exit status."""
    register()
    parser = script_parser(TRAIN_SCRIPT)
    parser.prog = "python -m domainbed_surgery.scripts.train"
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return train(args)


def _error(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _first_record_args(results: Path) -> Optional[dict]:
    try:
        with open(results, encoding="utf-8") as f:
            return json.loads(f.readline())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train(args) -> int:
    """One run of DomainBed's training (see the module docstring); the exit status."""
    os.makedirs(args.output_dir, exist_ok=True)
    try:
        lock = FolderLock(args.output_dir).acquire()
    except FolderBusy as exc:
        return _error(f"{exc}; not starting a second run there.", 75)
    try:
        return _train_locked(args, lock)
    except FolderGone as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 75
    finally:
        lock.release()


class FolderGone(RuntimeError):
    """The run's folder was deleted (and maybe made again) while it trained."""


def _still_ours(lock: FolderLock) -> None:
    if not lock.held():
        raise FolderGone(f"{lock.folder} was deleted while this run trained (`sweep "
                         "delete_incomplete`?); stopping without writing to it again.")


def _train_locked(args, lock: FolderLock) -> int:
    from domainbed import algorithms, datasets, hparams_registry  # noqa: PLC0415
    from domainbed.lib import misc  # noqa: PLC0415

    out = Path(args.output_dir)
    results_path = out / "results.jsonl"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = _first_record_args(results_path)
    if previous is not None and resume_state.different_args(previous, vars(args)):
        differ = resume_state.different_args(previous, vars(args))
        return _error(f"{out} holds a run with other arguments ({_shown(differ)}); use another "
                      "--output_dir, or delete that folder to replace its run.", 2)
    if (out / "done").exists():
        print(f"{out}: this run is already done (its 'done' file exists); nothing to do.",
              file=sys.stderr)
        return 0
    try:
        resume = resume_state.load(args.output_dir, device)
        if resume is not None:
            differ = resume_state.different_args(resume["args"], vars(args))
            if differ:
                raise resume_state.CannotResume(f"its resume state is of other arguments "
                                                f"({_shown(differ)})")
            resume_state.keep_records(results_path, resume["results_bytes"])
    except resume_state.CannotResume as exc:
        return _error(f"cannot continue the run in {out}: {exc}. Delete the folder (`sweep "
                      "delete_incomplete`) to start it over.", 1)
    if resume is None and results_path.exists() and results_path.stat().st_size:
        print(f"{out}: records without a resume state (an earlier run stopped before its "
              "first record was saved, or DomainBed's own train.py): starting over, they are "
              "removed.", file=sys.stderr)
        results_path.write_bytes(b"")

    stop = StopRequest()
    stop.install()
    sys.stdout = misc.Tee(os.path.join(args.output_dir, "out.txt"))
    sys.stderr = misc.Tee(os.path.join(args.output_dir, "err.txt"))
    # protocol facts (run_facts) are recorded where DomainBed's train script keeps its args
    importlib.import_module(TRAIN_SCRIPT).args = args

    print("Environment:")
    print("\tPython: {}".format(sys.version.split(" ")[0]))
    print("\tPyTorch: {}".format(torch.__version__))
    print("\tTorchvision: {}".format(torchvision.__version__))
    print("\tCUDA: {}".format(torch.version.cuda))
    print("\tCUDNN: {}".format(torch.backends.cudnn.version()))
    print("\tNumPy: {}".format(np.__version__))
    print("\tPIL: {}".format(PIL.__version__))
    print("Args:")
    for k, v in sorted(vars(args).items()):
        print("\t{}: {}".format(k, v))

    if args.hparams_seed == 0:
        hparams = hparams_registry.default_hparams(args.algorithm, args.dataset)
    else:
        hparams = hparams_registry.random_hparams(args.algorithm, args.dataset,
                                                  misc.seed_hash(args.hparams_seed, args.trial_seed))
    if args.hparams:
        hparams.update(json.loads(args.hparams))
    print("HParams:")
    for k, v in sorted(hparams.items()):
        print("\t{}: {}".format(k, v))
    if resume is not None:
        print(f"Resuming at step {resume['step']} from {resume_state.path(args.output_dir)}")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    if args.dataset in vars(datasets):
        dataset = vars(datasets)[args.dataset](args.data_dir, args.test_envs, hparams)
    else:
        raise NotImplementedError

    # in-splits train (but the test envs'), every split is evaluated; test envs also give
    # a 'uda' split (unlabeled data for domain adaptation), as in DomainBed
    in_splits, out_splits, uda_splits = [], [], []
    for env_i, env in enumerate(dataset):
        uda = []
        out_, in_ = misc.split_dataset(env, int(len(env) * args.holdout_fraction),
                                       misc.seed_hash(args.trial_seed, env_i))
        if env_i in args.test_envs:
            uda, in_ = misc.split_dataset(in_, int(len(in_) * args.uda_holdout_fraction),
                                          misc.seed_hash(args.trial_seed, env_i))
        if hparams["class_balanced"]:
            in_weights = misc.make_weights_for_balanced_classes(in_)
            out_weights = misc.make_weights_for_balanced_classes(out_)
            if uda is not None:
                uda_weights = misc.make_weights_for_balanced_classes(uda)
        else:
            in_weights, out_weights, uda_weights = None, None, None
        in_splits.append((in_, in_weights))
        out_splits.append((out_, out_weights))
        if len(uda):
            uda_splits.append((uda, uda_weights))

    if args.task == "domain_adaptation" and len(uda_splits) == 0:
        raise ValueError("Not enough unlabeled samples for domain adaptation.")

    saved = resume or {}
    train_states = saved.get("train_loaders") or [None] * len(in_splits)
    train_loaders = [ResumableInfiniteLoader(env, env_weights, hparams["batch_size"],
                                             dataset.N_WORKERS, state)
                     for (env, env_weights), state in zip(
                         [s for i, s in enumerate(in_splits) if i not in args.test_envs],
                         train_states)]
    uda_states = saved.get("uda_loaders") or [None] * len(uda_splits)
    uda_loaders = [ResumableInfiniteLoader(env, env_weights, hparams["batch_size"],
                                           dataset.N_WORKERS, state)
                   for (env, env_weights), state in zip(uda_splits, uda_states)]
    eval_loaders = [EvalLoader(env, 64, dataset.N_WORKERS)
                    for env, _ in (in_splits + out_splits + uda_splits)]
    eval_weights = [None for _ in (in_splits + out_splits + uda_splits)]
    eval_loader_names = ["env{}_in".format(i) for i in range(len(in_splits))]
    eval_loader_names += ["env{}_out".format(i) for i in range(len(out_splits))]
    eval_loader_names += ["env{}_uda".format(i) for i in range(len(uda_splits))]

    algorithm_class = algorithms.get_algorithm_class(args.algorithm)
    algorithm = algorithm_class(dataset.input_shape, dataset.num_classes,
                                len(dataset) - len(args.test_envs), hparams)
    if resume is not None:
        algorithm = resume["algorithm"]
    algorithm.to(device)

    train_minibatches_iterator = zip(*train_loaders)
    uda_minibatches_iterator = zip(*uda_loaders)
    checkpoint_vals = collections.defaultdict(lambda: [])
    checkpoint_vals.update({k: list(v) for k, v in saved.get("checkpoint_vals", {}).items()})

    steps_per_epoch = min([len(env) / hparams["batch_size"] for env, _ in in_splits])
    n_steps = args.steps or dataset.N_STEPS
    checkpoint_freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ

    def save_checkpoint(filename):
        if args.skip_model_save:
            return
        save_dict = {
            "args": vars(args),
            "model_input_shape": dataset.input_shape,
            "model_num_classes": dataset.num_classes,
            "model_num_domains": len(dataset) - len(args.test_envs),
            "model_hparams": hparams,
            "model_dict": algorithm.state_dict(),
        }
        torch.save(save_dict, os.path.join(args.output_dir, filename))

    def save_resume(next_step: int) -> None:
        _still_ours(lock)
        resume_state.save(args.output_dir, {
            "args": vars(args), "step": next_step, "algorithm": algorithm,
            "rng": resume_state.rng_state(),
            "train_loaders": [loader.state_dict() for loader in train_loaders],
            "uda_loaders": [loader.state_dict() for loader in uda_loaders],
            "checkpoint_vals": {k: list(v) for k, v in checkpoint_vals.items()},
            "last_results_keys": last_results_keys,
            "results_bytes": results_path.stat().st_size if results_path.exists() else 0,
        })

    last_results_keys = saved.get("last_results_keys")
    start_step = saved.get("step", 0)
    if resume is not None:
        resume_state.set_rng_state(resume["rng"])
    if stop.signum is not None:
        return _stopped(stop.signum, None)
    for step in range(start_step, n_steps):
        step_start_time = time.time()
        try:
            minibatches_device = [(x.to(device), y.to(device))
                                  for x, y in next(train_minibatches_iterator)]
            if args.task == "domain_adaptation":
                uda_device = [x.to(device) for x, _ in next(uda_minibatches_iterator)]
            else:
                uda_device = None
            step_vals = algorithm.update(minibatches_device, uda_device)
        except Exception:
            if stop.signum is not None:  # e.g. data workers gone with the job: keep the last state
                return _stopped(stop.signum, None)
            raise
        checkpoint_vals["step_time"].append(time.time() - step_start_time)

        for key, val in step_vals.items():
            checkpoint_vals[key].append(val)

        recorded = False
        if (step % checkpoint_freq == 0) or (step == n_steps - 1):
            results = {"step": step, "epoch": step / steps_per_epoch}
            for key, val in checkpoint_vals.items():
                results[key] = np.mean(val)
            evals = zip(eval_loader_names, eval_loaders, eval_weights)
            for name, loader, weights in evals:
                acc = misc.accuracy(algorithm, loader, weights, device)
                results[name + "_acc"] = acc
            results["mem_gb"] = torch.cuda.max_memory_allocated() / (1024. * 1024. * 1024.)

            results_keys = sorted(results.keys())
            if results_keys != last_results_keys:
                misc.print_row(results_keys, colwidth=12)
                last_results_keys = results_keys
            misc.print_row([results[key] for key in results_keys], colwidth=12)

            results.update({"hparams": hparams, "args": vars(args)})
            _still_ours(lock)
            with open(results_path, "a") as f:
                f.write(json.dumps(results, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            checkpoint_vals = collections.defaultdict(lambda: [])
            if args.save_model_every_checkpoint:
                save_checkpoint(f"model_step{step}.pkl")
            save_resume(step + 1)
            recorded = True
        if stop.signum is not None and step < n_steps - 1:
            if not recorded:
                save_resume(step + 1)
            return _stopped(stop.signum, step + 1)

    _still_ours(lock)
    save_checkpoint("model.pkl")
    with open(os.path.join(args.output_dir, "done"), "w") as f:
        f.write("done")
    resume_state.path(args.output_dir).unlink(missing_ok=True)
    return 0


def _stopped(signum: int, next_step: Optional[int]) -> int:
    where = (f"a resume state at step {next_step} is saved" if next_step is not None
             else "the last saved resume state stands")
    print(f"Stopped by {signal.Signals(signum).name}: {where}; run the same command again to "
          "continue.", file=sys.stderr)
    return 128 + signum


def _shown(differ: dict) -> str:
    return ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
