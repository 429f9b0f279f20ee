"""Shared fixtures; prints whether the DomainBed integration tests and the Slurm tests ran or
were skipped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

_domainbed_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
_skip_reasons: set[str] = set()
_slurm_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
_slurm_skip_reasons: set[str] = set()
#: Set (CI does) to make the Slurm tests fail instead of skipping where Slurm is not up.
REQUIRE_SLURM = "DOMAINBED_REQUIRE_SLURM"


def randomized(rule_name: str) -> bool:
    """Whether a rule's result depends on its generator, as observed on a conflicting
    matrix over a few seeds (a property of the rule, not a flag it declares)."""
    import torch

    from domainbed_surgery import rules

    rule = rules.get(rule_name)
    made = torch.Generator().manual_seed(0)
    chained = torch.randn(3, 9, generator=made, dtype=torch.float64)  # conflicts in a chain
    chained[1] = -0.7 * chained[0] + 0.3 * chained[1]
    chained[2] = -0.5 * chained[1] + 0.5 * chained[2]
    wide = torch.randn(3, 40, generator=made, dtype=torch.float64)  # some components agree
    wide[1] = -0.5 * wide[0] + 0.5 * wide[1]
    for g in (chained, wide):
        outs = [rule()(g, torch.Generator(device=rule().generator_device(g)).manual_seed(seed))
                for seed in range(6)]
        if any(not torch.equal(outs[0], o) for o in outs[1:]):
            return True
    return False


def require_domainbed() -> None:
    """For test modules that need DomainBed at import: register it, or skip the module loudly."""
    from domainbed_surgery import register
    from domainbed_surgery.plugin.locate import DomainBedNotFound

    try:
        register()
    except DomainBedNotFound as exc:
        pytest.skip(f"DomainBed integration skipped: {exc}", allow_module_level=True)


@pytest.fixture(scope="session")
def domainbed():
    """DomainBed with everything of ours registered; skips loudly without a checkout."""
    from domainbed_surgery import register
    from domainbed_surgery.plugin.locate import DomainBedNotFound

    try:
        register()
    except DomainBedNotFound as exc:
        pytest.skip(f"DomainBed integration skipped: {exc}")
    import domainbed

    return domainbed


@pytest.fixture
def subprocess_env():
    """Environment for child processes: this interpreter's bin first on PATH (sweeps call 'python')."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("DOMAINBED_DIR", os.path.expanduser("~/DomainBed"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real Slurm (sbatch, squeue): .ci/slurm")


@pytest.fixture(scope="session")
def slurm():
    """A reachable Slurm (``sbatch`` on PATH, ``sinfo`` answering); skips loudly without one,
    fails instead where ``DOMAINBED_REQUIRE_SLURM`` is set (CI, after ``.ci/slurm``)."""
    import shutil
    import subprocess

    problem = None
    if shutil.which("sbatch") is None:
        problem = "no `sbatch` on PATH"
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=30)
        states = proc.stdout.split()
        if proc.returncode != 0:
            problem = f"`sinfo` fails: {proc.stderr.strip()}"
        elif not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
            problem = f"no Slurm node is up (sinfo: {' '.join(states) or 'nothing'})"
    if problem:
        message = f"Slurm tests skipped: {problem} (as root, `bash .ci/slurm` starts a one-node Slurm)"
        if os.environ.get(REQUIRE_SLURM):
            pytest.fail(f"{message}; but {REQUIRE_SLURM} is set", pytrace=False)
        pytest.skip(message)
    return True


def pytest_collection_modifyitems(items):
    for item in items:
        if "domainbed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.domainbed)
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


def _count(report, outcomes: dict, reasons: set) -> None:
    if report.when == "call":
        outcomes[report.outcome] += 1
    elif report.skipped:
        outcomes["skipped"] += 1
        reasons.add(report.longrepr[2] if isinstance(report.longrepr, tuple)
                    else str(report.longrepr))
    elif report.failed:
        outcomes["failed"] += 1


def pytest_runtest_logreport(report):
    if "domainbed" in report.keywords:
        _count(report, _domainbed_outcomes, _skip_reasons)
    if "slurm" in report.keywords:
        _count(report, _slurm_outcomes, _slurm_skip_reasons)


def pytest_collectreport(report):
    if report.skipped and "DomainBed integration skipped" in str(report.longrepr):
        _domainbed_outcomes["skipped"] += 1
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skip_reasons.add(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    o = _domainbed_outcomes
    ran = o["passed"] + o["failed"]
    status = "RAN" if ran else "SKIPPED"
    terminalreporter.write_line(
        f"DomainBed integration tests: {status} ({o['passed']} passed, {o['failed']} failed, "
        f"{o['skipped']} skipped)")
    for reason in sorted(_skip_reasons):
        terminalreporter.write_line(f"  skip reason: {reason}")
    o = _slurm_outcomes
    ran = o["passed"] + o["failed"]
    terminalreporter.write_line(
        f"Slurm tests (a real Slurm): {'RAN' if ran else 'SKIPPED'} ({o['passed']} passed, "
        f"{o['failed']} failed, {o['skipped']} skipped)")
    for reason in sorted(_slurm_skip_reasons):
        terminalreporter.write_line(f"  skip reason: {reason}")


def archived_records(archive) -> list:
    """The ``results.jsonl`` records of every run in a committed ``runs.tar.gz``: one list
    of records (dicts) per run."""
    import json
    import tarfile

    with tarfile.open(archive) as tar:
        return [[json.loads(line) for line in tar.extractfile(member)]
                for member in tar.getmembers() if member.name.endswith("results.jsonl")]
