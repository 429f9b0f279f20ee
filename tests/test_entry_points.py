"""Our entry points check what DomainBed's scripts take silently: ``--test_envs`` and hparam keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("test_envs,expected", [
    (["4"], "RotatedDigits has 4 environments"),
    (["0", "-1"], "RotatedDigits has 4 environments"),
    (["0", "1", "2", "3"], "no training domain"),
])
def test_train_checks_test_envs(domainbed, subprocess_env, tmp_path, test_envs, expected):
    """Out of range, DomainBed trains on every domain; all of them, a bare StopIteration."""
    out = tmp_path / "run"
    proc = run(["domainbed_surgery.scripts.train", "--dataset", "RotatedDigits", "--algorithm",
                "ERM", "--test_envs", *test_envs, "--steps", "1", "--skip_model_save",
                "--hparams", json.dumps({"batch_size": 8}), "--output_dir", str(out)],
               subprocess_env, tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr and "--test_envs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "done").exists()


def test_train_warns_about_an_hparam_nobody_defines(domainbed, subprocess_env, tmp_path):
    out = tmp_path / "run"
    proc = run(["domainbed_surgery.scripts.train", "--dataset", "RotatedDigits", "--algorithm",
                "AgrSum", "--test_envs", "0", "--steps", "1", "--skip_model_save",
                "--hparams", json.dumps({"batch_size": 8, "surgery_batch": "single"}),
                "--output_dir", str(out)], subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if "'surgery_batch'" in line]
    assert warning and "AgrSum" in warning[0] and "'surgery_batches'" in warning[0]
    assert "'batch_size'" not in proc.stderr
    assert (out / "done").exists()  # a warning, not an error


def test_sweep_warns_about_an_hparam_no_swept_algorithm_defines(domainbed, subprocess_env,
                                                                  tmp_path):
    hparams = {"batch_size": 8, "surgery_batch": "single", "surgery_batches": "single"}
    proc = run(["domainbed_surgery.scripts.sweep", "launch", "--datasets", "RotatedDigits",
                "--algorithms", "ERM", "AgrSum", "--n_hparams", "1", "--n_trials", "1",
                "--single_test_envs", "--hparams", json.dumps(hparams),
                "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "s"),
                "--command_launcher", "dummy", "--skip_confirmation"], subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Dummy launcher:") == 8
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: hparam")]
    # surgery_batches is AgrSum's (not ERM's): fine in a sweep of both; surgery_batch is nobody's
    assert len(warnings) == 1 and "'surgery_batch'" in warnings[0]


def test_sweep_refuses_hparams_that_are_not_json(domainbed, subprocess_env, tmp_path):
    proc = run(["domainbed_surgery.scripts.sweep", "launch", "--datasets", "RotatedDigits",
                "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
                "--hparams", "{'batch_size': 8}", "--data_dir", str(tmp_path),
                "--output_dir", str(tmp_path / "s"), "--command_launcher", "dummy",
                "--skip_confirmation"], subprocess_env, tmp_path)
    assert proc.returncode != 0 and "--hparams" in proc.stderr and "JSON" in proc.stderr
    assert "Dummy launcher:" not in proc.stdout


# -- what would make failing or silently wrong jobs, stopped before anything is made ----------------
@pytest.mark.parametrize("option,value", [("--steps", "0"), ("--steps", "-3"),
                                          ("--checkpoint_freq", "0")])
def test_train_refuses_steps_below_one(domainbed, tmp_path, capsys, option, value):
    """DomainBed's train reads --steps 0 as "the dataset's default" (1,001 steps here)."""
    from domainbed_surgery.scripts import train

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train.main(["--dataset", "RotatedDigits", "--test_envs", "0", option, value,
                    "--output_dir", str(out)])
    assert exc.value.code == 2
    assert f"{option} {value}: must be a positive number of steps" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra,expected", [
    (["--steps", "0"], "--steps 0: must be a positive number of steps"),
    (["--algorithms", "ERM", "AgrSumm"], "'AgrSumm' is not an algorithm of DomainBed or ours. "
                                         "Did you mean 'AgrSum'?"),
    (["--algorithms", "PCGrad", "--hparams", '{"pcgrad_order": "indepndent"}'],
     "hparam pcgrad_order must be one of"),
    (["--algorithms", "AgrSum", "--hparams", '{"surgery_batches": "singel"}'],
     "hparam surgery_batches must be one of"),
    (["--algorithms", "ERM", "--hparams", '{"data_augmentation": "false"}'],
     'data_augmentation="false" must be true or false'),
    (["--algorithms", "ERM", "--hparams", '{"batch_size": "32"}'], 'batch_size="32" must be a number'),
    (["--algorithms", "ERM", "--hparams", '{"backbone": "resnet81"}'],
     "backbone 'resnet81' is none of ours"),
])
def test_sweep_refuses_what_would_make_failing_jobs(domainbed, tmp_path, capsys, extra, expected):
    """A typo in an algorithm name or an hparam value, or --steps 0: the sweep stops before it
    makes a single job folder (DomainBed's would submit every job, each failing when it starts)."""
    from domainbed_surgery.scripts import sweep

    out = tmp_path / "s"
    args = ["launch", "--datasets", "RotatedDigits", "--n_hparams", "1", "--n_trials", "1",
            "--data_dir", str(tmp_path), "--output_dir", str(out), "--command_launcher", "dummy",
            "--skip_confirmation", *extra]
    if "--algorithms" not in extra:
        args += ["--algorithms", "ERM"]
    with pytest.raises(SystemExit) as exc:
        sweep.main(args)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
