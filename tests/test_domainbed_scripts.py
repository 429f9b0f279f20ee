"""End to end through DomainBed's own scripts: train, sweep (local launcher), collect_results."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TINY = json.dumps({"batch_size": 8})


def run(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def domainbed_root(domainbed):
    from pathlib import Path

    return Path(domainbed.__file__).resolve().parent.parent


def records(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["AgrRand", "PCGrad"])
def test_domainbed_train_writes_our_diagnostics(domainbed, subprocess_env, tmp_path, algorithm):
    out = tmp_path / algorithm
    run(["domainbed.scripts.train", "--dataset", "RotatedDigits", "--algorithm", algorithm,
         "--test_envs", "0", "--steps", "3", "--hparams", TINY, "--output_dir", str(out),
         "--skip_model_save"], subprocess_env, tmp_path)
    recs = records(out)
    assert [r["step"] for r in recs] == [0, 2]
    for r in recs:
        assert r["loss"] > 0 and r["diagnostics_every"] == 10  # the default, k = 10
        assert r["args"]["algorithm"] == algorithm and r["hparams"]["backbone"] == "mnist_cnn"
    # step 0 is a diagnostic step; the record of steps 1-2 has none to average
    assert 0 <= recs[0]["agreement"] <= 1 and -1 <= recs[0]["cosine"] <= 1
    assert "agreement" not in recs[1] and "cosine" not in recs[1]
    assert (out / "done").exists()
    # the featurizer names its weights in the log DomainBed tees stdout into
    assert "backbone mnist_cnn: random init (no pretrained weights exist for it)" in \
        (out / "out.txt").read_text().splitlines()


def test_autoregister_off_then_our_entry_point(domainbed, subprocess_env, tmp_path):
    # without the hook, DomainBed is found the usual way: on PYTHONPATH
    env = dict(subprocess_env, DOMAINBED_SURGERY_AUTOREGISTER="0",
               PYTHONPATH=str(domainbed_root(domainbed)))
    args = ["--dataset", "RotatedDigits", "--algorithm", "AgrSum", "--test_envs", "1",
            "--steps", "1", "--hparams", TINY, "--skip_model_save"]
    failed = subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *args,
                             "--output_dir", str(tmp_path / "off")],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # DomainBed itself knows neither our dataset nor our algorithm
    assert failed.returncode != 0 and "NotImplementedError" in failed.stdout + failed.stderr
    run(["domainbed_surgery.scripts.train", *args, "--output_dir", str(tmp_path / "on")],
        env, tmp_path)
    assert "agreement" in records(tmp_path / "on")[0]


def test_sweep_and_collect_results_show_our_rows(domainbed, subprocess_env, tmp_path):
    """A sweep (two targets) and DomainBed's collect_results with ERM, AgrSum and (when
    TorchJD is installed) one of TorchJD's rules, UPGrad; our report shows the same columns."""
    from domainbed_surgery import rules

    ours = ["AgrSum"] + (["UPGrad"] if "UPGrad" in rules.names() else [])
    sweep = tmp_path / "sweep"
    out = run(["domainbed_surgery.scripts.sweep", "launch", "--datasets", "RotatedDigits",
               "--algorithms", "ERM", *ours, "--n_hparams", "1", "--n_trials", "1",
               "--single_test_envs", "--test_envs", "0", "1", "--steps", "2", "--hparams", TINY,
               "--data_dir", str(tmp_path), "--output_dir", str(sweep),
               "--command_launcher", "local", "--skip_confirmation"], subprocess_env, tmp_path)
    n_jobs = 2 * (1 + len(ours))
    assert f"Launched {n_jobs} jobs" in out
    assert len(list(sweep.glob("*/done"))) == n_jobs
    table = run(["domainbed.scripts.collect_results", "--input_dir", str(sweep)],
                subprocess_env, tmp_path)
    assert "Dataset: RotatedDigits" in table
    names = ["ERM", *ours]
    rows = [line.split() for line in table.splitlines() if line.split()[:1] and
            line.split()[0] in names]
    # per selection method: a dataset row and an averages row for each algorithm
    assert all(sum(r[0] == name for r in rows) == 6 for name in names)
    # training-domain validation (the first table): a number for targets 0 and 1 ("acc +/-
    # err"), X for the targets not run and the average
    for r in rows[:len(names)]:
        assert r[2] == r[5] == "+/-" and r[7:] == ["X", "X", "X"], r
    report = run(["domainbed_surgery.scripts.report", "--input_dir", str(sweep),
                  "--no_figures"], subprocess_env, tmp_path)
    header = next(line for line in report.splitlines() if line.startswith("Target"))
    assert header.split() == ["Target", *names]


def test_our_sweep_adds_checkpoint_freq_to_every_job(domainbed, subprocess_env, tmp_path):
    out = run(["domainbed_surgery.scripts.sweep", "launch", "--datasets", "RotatedDigits",
               "--algorithms", "AgrSum", "PCGrad", "--n_hparams", "1", "--n_trials", "1",
               "--single_test_envs", "--steps", "40", "--checkpoint_freq", "20",
               "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "s"),
               "--command_launcher", "dummy", "--skip_confirmation"], subprocess_env, tmp_path)
    commands = [line for line in out.splitlines() if line.startswith("Dummy launcher:")]
    assert len(commands) == 8
    assert all(" --checkpoint_freq 20 " in c and "-m domainbed.scripts.train" in c
               for c in commands)


def launch_preset(preset, subprocess_env, tmp_path, out):
    """Run ``sweeps/<preset>`` to DomainBed's dummy launcher (no training); returns the
    process and the job lines it printed."""
    from conftest import REPO

    env = dict(subprocess_env, LAUNCHER="dummy", DATA_DIR=str(tmp_path), OUT=str(tmp_path / out))
    proc = subprocess.run(["bash", str(REPO / "sweeps" / preset)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    return proc, [line for line in proc.stdout.splitlines() if line.startswith("Dummy launcher:")]


def job_hparams(job):
    """The ``--hparams`` JSON of one dummy-launcher job line."""
    return json.loads(job.split("--hparams ", 1)[1].split("'")[1])


def test_presets_launch(domainbed, subprocess_env, tmp_path):
    """Every preset runs its sweep to the launcher (DomainBed's dummy launcher: no training)."""
    # paper_table1.sh (1920 jobs) is launched by test_paper_preset_is_the_authors_protocol
    expected = {"control_single_vs_multi.sh": 72, "pacs_table1.sh": 48,
                "pacs_control.sh": 72, "pacs_batch_size.sh": 12}
    for preset, n_jobs in expected.items():
        proc, jobs = launch_preset(preset, subprocess_env, tmp_path, preset)
        assert len(jobs) == n_jobs, proc.stderr[-2000:]
        # no job ran, so the closing report has nothing to read and says so
        assert "no results.jsonl records" in proc.stderr + proc.stdout


def test_paper_preset_is_the_authors_protocol(domainbed, subprocess_env, tmp_path):
    """sweeps/paper_table1.sh: no data augmentation (the authors' code has none), AlexNet
    pretrained, Adam lr 1e-5 / weight decay 5e-5, 128 per domain, 1000 steps, validation
    every 20 steps, 20 trials of fixed hparams, for every job."""
    proc, jobs = launch_preset("paper_table1.sh", subprocess_env, tmp_path, "p")
    assert len(jobs) == 1920, proc.stderr[-2000:]
    assert "no results.jsonl records" in proc.stderr + proc.stdout  # the report ran
    for job in jobs:
        hparams = job_hparams(job)
        assert hparams == {"backbone": "alexnet", "pretrained": True, "lr": 1e-5,
                           "weight_decay": 5e-5, "batch_size": 128,
                           "data_augmentation": False}, job
        assert "--steps 1000" in job and "--checkpoint_freq 20 " in job
        assert "--hparams_seed 0" in job
    assert {int(j.split("--trial_seed ")[1].split()[0]) for j in jobs} == set(range(20))


def test_pretrained_preset_scales_the_penalty_warm_ups(domainbed, subprocess_env, tmp_path):
    """sweeps/pacs_pretrained_table1.sh: IRM's and Fishr's warm-ups are DomainBed's (500 and
    1,500 of 5,000 steps) scaled to the run's 300 steps, so that they reach their full
    penalty as in DomainBed; every other job keeps Table 1's hparams (and so its job folders)."""
    proc, jobs = launch_preset("pacs_pretrained_table1.sh", subprocess_env, tmp_path, "p")
    counts = {}
    table1 = {"batch_size": 128, "data_augmentation": False, "frozen_prefix": "blocks.5"}
    warm_ups = {"irm_penalty_anneal_iters": 30, "penalty_anneal_iters": 90}
    for job in jobs:
        algorithm = job.split("--algorithm ")[1].split()[0]
        counts[algorithm] = counts.get(algorithm, 0) + 1
        hparams = job_hparams(job)
        assert hparams == ({**table1, **warm_ups} if algorithm in ("IRM", "Fishr") else table1), job
    assert counts == {**{a: 24 for a in ("ERM", "AgrSum", "AgrRand", "PCGrad")},
                      **{a: 12 for a in ("IRM", "GroupDRO", "Mixup", "MLDG", "Fish", "Fishr",
                                         "UPGrad", "MGDA", "CAGrad")}}, proc.stderr[-2000:]


def test_gpu_preset_is_the_full_size_protocol_and_makes_the_pilots_jobs(
        domainbed, subprocess_env, tmp_path):
    """sweeps/pacs_pretrained_gpu.sh: the paper's four methods x 4 targets x 10 trials on
    DomainBed's PACS (224 px), EfficientNet-Lite0 pretrained, full fine-tuning, 128 per
    domain, 1,000 steps; among its jobs are the committed pilot's two (ERM and AgrSum,
    target 3, trial 0), argument for argument (DomainBed's seeds included), all but the
    data and output folders."""
    import shlex

    from conftest import REPO, archived_records

    hparams = {"backbone": "efficientnet_lite0", "pretrained": True, "batch_size": 128,
               "data_augmentation": False}
    proc, jobs = launch_preset("pacs_pretrained_gpu.sh", subprocess_env, tmp_path, "full")
    assert len(jobs) == 4 * 4 * 10, proc.stderr[-2000:]
    made = {}
    for job in jobs:
        assert job_hparams(job) == hparams, job
        words = shlex.split(job.split("Dummy launcher: ", 1)[1])[3:]
        args = dict(zip(words[::2], words[1::2]))
        assert (args["--dataset"], args["--steps"], args["--checkpoint_freq"]) == (
            "PACS", "1000", "100"), job
        made[args["--algorithm"], args["--test_envs"], args["--trial_seed"]] = args
    assert {key[0] for key in made} == {"ERM", "AgrSum", "AgrRand", "PCGrad"}
    assert {key[1] for key in made} == {"0", "1", "2", "3"}
    assert {key[2] for key in made} == {str(t) for t in range(10)}
    archive = REPO / "docs" / "results" / "pacs-pretrained" / "gpu_pilot" / "runs.tar.gz"
    runs = [records[0]["args"] for records in archived_records(archive)]
    assert sorted(run["algorithm"] for run in runs) == ["AgrSum", "ERM"]
    for run in runs:
        args = made[run["algorithm"], "3", "0"]
        for key, value in args.items():
            if key in ("--data_dir", "--output_dir"):
                continue
            expected = run[key[2:]]
            expected = " ".join(map(str, expected)) if isinstance(expected, list) else str(expected)
            assert value == expected, (run["algorithm"], key)


@pytest.mark.parametrize("steps, irm, fishr", [(300, 30, 90), (1000, 100, 300),
                                               (5000, 500, 1500), (333, 33, 100)])
def test_penalty_warm_ups_are_domainbeds_share_of_the_steps(steps, irm, fishr):
    """anneal_hparams (sweeps/pacs_common.sh): 10% and 30% of the steps, rounded; at
    DomainBed's 5,000 steps its own defaults."""
    from conftest import REPO

    proc = subprocess.run(["bash", "-c", f'source "$0"; anneal_hparams {steps}',
                           str(REPO / "sweeps" / "pacs_common.sh")],
                          capture_output=True, text=True, timeout=60)
    assert json.loads("{" + proc.stdout.strip() + "}") == {
        "irm_penalty_anneal_iters": irm, "penalty_anneal_iters": fishr}, proc.stderr


def _rule_names():
    from domainbed_surgery import rules

    return rules.names()


def test_every_rule_trains_through_domainbed_train(domainbed, tmp_path, monkeypatch):
    """``python -m domainbed.scripts.train --algorithm NAME`` for every registered rule
    (TorchJD's included when installed), run in this process (``runpy`` as ``__main__``:
    importing torch and DomainBed once) on the offline dataset, one step each (the
    evaluation of every split dominates): a record with the diagnostics, a ``done`` file,
    a finite loss."""
    import math
    import runpy
    import warnings

    names = _rule_names()
    assert {"AgrSum", "AgrRand", "PCGrad"} <= set(names)
    for name in names:
        out = tmp_path / name
        monkeypatch.setattr(sys, "argv", [
            "train", "--dataset", "RotatedDigits", "--algorithm", name, "--test_envs", "0",
            "--steps", "1", "--hparams", TINY,
            "--data_dir", str(tmp_path), "--output_dir", str(out), "--skip_model_save"])
        monkeypatch.setattr(sys, "stdout", sys.stdout)  # train.py tees both into files
        monkeypatch.setattr(sys, "stderr", sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpy.run_module("domainbed.scripts.train", run_name="__main__")
        recs = records(out)
        assert [r["step"] for r in recs] == [0], name  # one update, one evaluation
        for r in recs:
            assert r["args"]["algorithm"] == name and math.isfinite(r["loss"]), name
            assert 0 <= r["agreement"] <= 1 and -1 <= r["cosine"] <= 1, name
        assert (out / "done").exists(), name


def sweep_args(out, data_dir, *extra, datasets=("Debug28",), algorithms=("ERM",)):
    """A 1-trial, 1-hparam, leave-one-domain-out sweep launch of our entry point."""
    return ["domainbed_surgery.scripts.sweep", "launch", "--datasets", *datasets,
            "--algorithms", *algorithms, "--n_hparams", "1", "--n_trials", "1",
            "--single_test_envs", "--hparams", TINY, "--data_dir", str(data_dir),
            "--output_dir", str(out), "--skip_confirmation", *extra]


def test_checkpoint_freq_through_the_parallel_launcher(domainbed, subprocess_env, tmp_path):
    """--checkpoint_freq with `parallel` and `slurm` (both raised RegistrationConflict), also
    with DOMAINBED_SURGERY_AUTOREGISTER=0: every job checkpoints every 2 steps; another
    frequency makes other jobs, never reuses these, and says so.

    DomainBed's own Debug28 dataset (3 domains), so that the jobs need nothing of ours."""
    env = dict(subprocess_env, DOMAINBED_SURGERY_AUTOREGISTER="0",
               PYTHONPATH=str(domainbed_root(domainbed)), DOMAINBED_PARALLEL_JOBS="2",
               DOMAINBED_PARALLEL_GPUS="none", DOMAINBED_SLURM_CLUSTER="local",
               DOMAINBED_SLURM_GPUS="0", DOMAINBED_SLURM_LOG_DIR=str(tmp_path / "logs"))
    out = tmp_path / "sweep"
    run(sweep_args(out, tmp_path, "--steps", "5", "--checkpoint_freq", "2",
                   "--command_launcher", "parallel"), env, tmp_path)
    runs = sorted(out.glob("*/done"))
    assert len(runs) == 3
    for done in runs:
        recs = records(done.parent)
        assert [r["step"] for r in recs] == [0, 2, 4]
        assert recs[0]["args"]["checkpoint_freq"] == 2
    # the same frequency again, through `slurm`: all done, nothing to launch
    again = run(sweep_args(out, tmp_path, "--steps", "5", "--checkpoint_freq", "2",
                           "--command_launcher", "slurm"), env, tmp_path)
    assert "3 jobs: 3 done, 0 incomplete, 0 not launched." in again
    # another frequency: these runs are not reused (other folders), and it says so
    other = subprocess.run([sys.executable, "-m", *sweep_args(
        out, tmp_path, "--steps", "5", "--checkpoint_freq", "3", "--command_launcher", "dummy")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "3 jobs: 0 done, 0 incomplete, 3 not launched." in other.stdout
    assert other.stdout.count("Dummy launcher:") == 3
    assert "3 run(s) in" in other.stderr and "--checkpoint_freq 2" in other.stderr


def test_sweep_with_failed_jobs_exits_non_zero(domainbed, subprocess_env, tmp_path):
    """DomainBed's own sweep ignores what the launcher returns: `parallel` raises after its
    report so that the sweep exits non-zero and scripted pipelines stop."""
    env = dict(subprocess_env, DOMAINBED_PARALLEL_JOBS="2", DOMAINBED_PARALLEL_GPUS="none")
    args = sweep_args(tmp_path / "sweep", tmp_path, "--steps", "1", "--command_launcher",
                      "parallel")
    args[0] = "domainbed.scripts.sweep"  # DomainBed's own entry point
    args[args.index(TINY)] = json.dumps({"batch_size": 8, "backbone": "no_such_backbone"})
    proc = subprocess.run([sys.executable, "-m", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "0 succeeded, 3 failed" in proc.stderr and "3 of 3 job(s) failed" in proc.stderr
    assert proc.stderr.count("FAILED (exit code 1)") == 3


def test_sweep_on_chosen_targets(domainbed, subprocess_env, tmp_path):
    """--test_envs: leave-one-domain-out on the chosen targets only; unknown ones refused."""
    args = ["domainbed_surgery.scripts.sweep", "launch", "--datasets", "RotatedDigits",
            "--algorithms", "ERM", "AgrSum", "--n_hparams", "1", "--n_trials", "2",
            "--single_test_envs", "--test_envs", "1", "3", "--steps", "5",
            "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "s"),
            "--command_launcher", "dummy", "--skip_confirmation"]
    out = run(args, subprocess_env, tmp_path)
    jobs = [line for line in out.splitlines() if line.startswith("Dummy launcher:")]
    assert len(jobs) == 2 * 2 * 2  # algorithms x targets x trials
    assert {j.split("--test_envs ")[1].split()[0] for j in jobs} == {"1", "3"}
    i = args.index("--test_envs")
    bad = subprocess.run([sys.executable, "-m", *args[:i + 1], "4", *args[i + 3:]],
                         env=subprocess_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "RotatedDigits has environments 0..3" in bad.stderr
