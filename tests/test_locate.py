"""Finding DomainBed: DOMAINBED_DIR may name the checkout or its package; a clear error otherwise."""

import subprocess
import sys

from domainbed_surgery.plugin import locate


def fake_checkout(root):
    (root / "domainbed").mkdir(parents=True)
    (root / "domainbed" / "__init__.py").write_text("")
    return root


def test_domainbed_dir_accepts_the_checkout_or_the_package(tmp_path, monkeypatch):
    root = fake_checkout(tmp_path / "DB")
    monkeypatch.setenv(locate.ENV_VAR, str(root))
    assert locate.domainbed_dir() == root.resolve()
    monkeypatch.setenv(locate.ENV_VAR, str(root / "domainbed"))
    assert locate.domainbed_dir() == root.resolve()
    monkeypatch.setenv(locate.ENV_VAR, str(tmp_path / "nothing"))
    assert locate.domainbed_dir() is None


def test_not_found_is_a_clear_error_in_a_fresh_interpreter(tmp_path):
    code = ("import domainbed_surgery\n"
            "try:\n    domainbed_surgery.register()\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    env = {"DOMAINBED_DIR": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("DomainBedNotFound") and locate.PINNED_COMMIT in out
    assert "DOMAINBED_DIR" in out
