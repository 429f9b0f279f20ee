"""The CI scripts run against the package as it is laid out now (a moved module once broke CI's setup)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _inline_python(script: Path) -> list[str]:
    """The Python heredocs (``<<'PY' ... PY``) of a shell script."""
    return re.findall(r"<<'PY'\n(.*?)\nPY\n", script.read_text(), flags=re.S)


def test_ci_setup_inline_python_runs():
    snippets = _inline_python(ROOT / ".ci" / "setup")
    assert snippets, "expected the DomainBed report heredoc in .ci/setup"
    for code in snippets:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("DomainBed: "), proc.stdout

