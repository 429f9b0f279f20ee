"""A truncated ``results.jsonl`` line: our tools skip it with a warning naming file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def record(algorithm: str, test_env: int, step: int, acc: float) -> dict:
    """One DomainBed checkpoint record, with the diagnostics our algorithms log."""
    return {"args": {"dataset": "RotatedDigits", "algorithm": algorithm, "test_envs": [test_env],
                     "trial_seed": 0, "hparams_seed": 0, "holdout_fraction": 0.2},
            "hparams": {"batch_size": 8}, "step": step, "agreement": 0.5, "cosine": 0.1,
            **{f"env{e}_{s}_acc": acc for e in range(4) for s in ("in", "out")}}


def write_sweep(root: Path) -> Path:
    """Four runs of AgrSum (one per target), two records each; run t2's last line is cut short."""
    for env in range(4):
        run = root / f"t{env}"
        run.mkdir(parents=True)
        text = "".join(json.dumps(record("AgrSum", env, s, 0.5 + 0.1 * env)) + "\n"
                       for s in (0, 5))
        if env == 2:
            text += json.dumps(record("AgrSum", env, 9, 0.9))[:57]  # a killed write
        (run / "results.jsonl").write_text(text)
        (run / "done").write_text("done")
    (root / "loose_file.txt").write_text("not a run")
    return root


@pytest.fixture
def sweep(tmp_path):
    return write_sweep(tmp_path / "sweep")


def test_loader_skips_the_bad_line_and_names_file_and_line(domainbed, sweep, capsys):
    from domainbed_surgery.report import records as rec

    records = rec.load_records(sweep)
    assert len(records) == 8
    assert sorted((r["args"]["test_envs"][0], r["step"]) for r in records) == \
        [(e, s) for e in range(4) for s in (0, 5)]
    err = capsys.readouterr().err
    assert f"{sweep / 't2' / 'results.jsonl'}, line 3" in err and "skipped" in err
    from domainbed.lib.query import Q

    assert isinstance(records, Q)  # what DomainBed's reporting functions expect


def test_loader_keeps_what_domainbed_reads(domainbed, tmp_path):
    """On a clean sweep, exactly DomainBed's records (a last line without newline included)."""
    from domainbed.lib import reporting

    from domainbed_surgery.report import records as rec

    root = tmp_path / "clean"
    for env in range(2):
        run = root / f"r{env}"
        run.mkdir(parents=True)
        (run / "results.jsonl").write_text("".join(
            json.dumps(record("ERM", env, s, 0.5)) + "\n" for s in (0, 5)))
    key = lambda r: (r["args"]["test_envs"][0], r["step"])  # noqa: E731
    assert sorted(rec.load_records(root), key=key) == \
        sorted(reporting.load_records(str(root)), key=key)


def test_report_cli_skips_bad_line(domainbed, sweep, tmp_path, capsys):
    from domainbed_surgery.scripts import report as cli

    cli.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "rep"), "--no_figures",
              "--baseline", "none"])
    captured = capsys.readouterr()
    assert "Total records: 8" in captured.out
    assert "t2/results.jsonl, line 3" in captured.err


def test_agreement_curves_cli_skips_bad_line(domainbed, sweep, tmp_path, capsys):
    from domainbed_surgery.scripts import agreement_curves as cli

    assert cli.main(["--input_dir", str(sweep), "--output_dir", str(tmp_path / "c")]) == 0
    assert "t2/results.jsonl, line 3" in capsys.readouterr().err
    rows = (tmp_path / "c" / "agreement_curves.csv").read_text().splitlines()
    assert len(rows) == 1 + 8


def test_our_collect_results_skips_bad_line(domainbed, sweep, subprocess_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "domainbed_surgery.scripts.collect_results",
                           "--input_dir", str(sweep)], env=subprocess_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "t2/results.jsonl, line 3" in proc.stderr
    assert "Dataset: RotatedDigits" in proc.stdout and "AgrSum" in proc.stdout
    # DomainBed's own script still stops on the line (we change only our entry point)
    plain = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results",
                            "--input_dir", str(sweep)], env=subprocess_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "JSONDecodeError" in plain.stderr


def test_loader_warns_about_runs_without_done(domainbed, sweep, capsys):
    """A table made mid-sweep uses the partial records (as DomainBed does) and says so."""
    from domainbed_surgery.report import records as rec

    rec.load_records(sweep)
    assert "no 'done' file" not in capsys.readouterr().err
    (sweep / "t1" / "done").unlink()
    records = rec.load_records(sweep)
    assert len(records) == 8  # still every record, as DomainBed's loader
    err = capsys.readouterr().err
    assert "1 run(s)" in err and "no 'done' file" in err and "t1" in err


def add_stray_run(sweep: Path, test_env: int = 7) -> Path:
    """A run folder of the same sweep launched with ``--test_envs 7``: RotatedDigits has
    environments 0-3, so its records hold env0..env3 accuracies and no ``env7_in_acc``."""
    run = sweep / "stray"
    run.mkdir()
    lines = []
    for step in (0, 5):
        r = record("AgrSum", 0, step, 0.99)
        r["args"]["test_envs"] = [test_env]
        lines.append(json.dumps(r) + "\n")
    (run / "results.jsonl").write_text("".join(lines))
    (run / "done").write_text("done")
    return run


def test_loader_skips_a_run_holding_out_an_env_the_dataset_lacks(domainbed, sweep, capsys):
    """DomainBed's selection stops on it with a bare KeyError 'env7_in_acc' naming no run;
    our loader leaves it out and names the folder and why."""
    from domainbed_surgery.report import records as rec

    stray = add_stray_run(sweep)
    records = rec.load_records(sweep)
    assert len(records) == 8 and all(r["args"]["test_envs"] != [7] for r in records)
    err = capsys.readouterr().err
    assert (f"warning: {stray}: skipped (2 records): test_envs [7] names environment 7, which "
            "RotatedDigits does not have (it has 4: 0-3 = 0, 25, 50, 75)") in err


def test_our_collect_results_skips_a_stray_test_env(domainbed, sweep, subprocess_env, tmp_path):
    stray = add_stray_run(sweep)
    proc = subprocess.run([sys.executable, "-m", "domainbed_surgery.scripts.collect_results",
                           "--input_dir", str(sweep)], env=subprocess_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: {stray}: skipped" in proc.stderr and "environment 7" in proc.stderr
    assert "Dataset: RotatedDigits" in proc.stdout
    # DomainBed's own script stops with a KeyError that names no run
    (sweep / "t2" / "results.jsonl").write_text(
        (sweep / "t2" / "results.jsonl").read_text().rsplit("\n", 1)[0] + "\n")  # no bad line
    plain = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results",
                            "--input_dir", str(sweep)], env=subprocess_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "KeyError: 'env7_in_acc'" in plain.stderr
