"""The README and the presets name files that exist (modules moved once and left stale paths)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "sweeps").glob("*.sh"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_named_package_paths_exist(document):
    named = set(re.findall(r"domainbed_surgery/[\w/]+\.(?:py|pth)", document.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{document.name} names missing files: {missing}"


# -- every dotted reference resolves -------------------------------------------------------
PACKAGE = REPO / "domainbed_surgery"
ABSOLUTE = re.compile(r"\bdomainbed_surgery(?:\.[A-Za-z_]\w*)+")
#: ``:role:`~..module.name``` references relative to the module they are written in.
RELATIVE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?(\.+[A-Za-z_][\w.]*)`")
#: Dotted names that are not Python references, and why.
NOT_REFERENCES = {"domainbed_surgery.pth": "the start-up hook's file",
                  "domainbed_surgery.scripts.X": "a placeholder for any script"}


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names an importable module, or an attribute reached from one."""
    import importlib

    parts = dotted.rstrip(".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def absolute(relative: str, source: Path) -> str:
    """``..rules.x`` written in ``source`` as an absolute dotted name."""
    module = source.relative_to(REPO).with_suffix("").parts
    package = list(module[:-1]) if source.name != "__init__.py" else list(module[:-1])
    dots = len(relative) - len(relative.lstrip("."))
    base = package[:len(package) - (dots - 1)] if dots > 1 else package
    return ".".join(base + [relative.lstrip(".")])


def references() -> list[tuple[str, str]]:
    """(where, dotted name) for every reference in the package, README, setup.cfg, sweeps, docs."""
    found = []
    for source in sorted(PACKAGE.rglob("*.py")):
        text = source.read_text(encoding="utf-8")
        where = str(source.relative_to(REPO))
        found += [(where, m) for m in ABSOLUTE.findall(text)]
        found += [(where, absolute(m, source)) for m in RELATIVE.findall(text)]
    documents = [REPO / "README.md", REPO / "setup.cfg", *sorted((REPO / "sweeps").glob("*.sh")),
                 *sorted((REPO / "docs").rglob("*.md"))]
    for document in documents:
        found += [(str(document.relative_to(REPO)), m)
                  for m in ABSOLUTE.findall(document.read_text(encoding="utf-8"))]
    return sorted({(w, m.rstrip(".")) for w, m in found if m.rstrip(".") not in NOT_REFERENCES})


def test_every_dotted_reference_resolves(domainbed):
    """Docstrings, the README, setup.cfg, the presets and docs/ name modules and objects that
    exist (modules moved, and docstrings kept naming the old places)."""
    refs = references()
    assert len(refs) > 50  # the scan finds them
    stale = [f"{where}: {name}" for where, name in refs if not resolves(name)]
    assert not stale, "stale references:\n" + "\n".join(stale)


def test_relative_references_are_made_absolute_like_python_does():
    here = PACKAGE / "surgery" / "algorithm.py"
    assert absolute(".batchnorm", here) == "domainbed_surgery.surgery.batchnorm"
    assert absolute("..rules.one_pass", here) == "domainbed_surgery.rules.one_pass"
    init = PACKAGE / "rules" / "__init__.py"
    assert absolute(".interface", init) == "domainbed_surgery.rules.interface"


# -- the README's layout table is the tree ---------------------------------------------------
def layout_rows() -> dict[str, str]:
    """``package/`` (or ``top level``) -> its row's text, from the README's Code layout table."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Code layout", 1)[1]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*(`(\w+)/`|top level)\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(2) + "/" if match.group(2) else "top level"] = match.group(3)
    return rows


def test_layout_table_names_every_package_and_module():
    rows = layout_rows()
    packages = sorted(p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(k for k in rows if k != "top level") == packages
    for package in packages:
        files = sorted(f.relative_to(PACKAGE / package) for f in (PACKAGE / package).rglob("*.py")
                       if f.name != "__init__.py")
        named = set(re.findall(r"(\w+\.py)", rows[package]))
        missing = [str(f) for f in files if f.name not in named]
        assert not missing, f"README layout row {package} does not name {missing}"
        stale = sorted(n for n in named if not any(f.name == n for f in files)
                       and not (PACKAGE / n).is_file())
        assert not stale, f"README layout row {package} names files that do not exist: {stale}"
    top = sorted(f.name for f in PACKAGE.glob("*.py") if f.name != "__init__.py")
    named_top = set(re.findall(r"(\w+\.py)", " ".join(rows.values())))
    assert not [f for f in top if f not in named_top], "top-level modules missing from the layout"
