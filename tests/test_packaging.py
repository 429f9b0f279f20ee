"""A regular (non-editable) install ships every module: setup.cfg finds packages by their
``__init__.py``, and a folder without one would be left out of the wheel silently."""

from __future__ import annotations

from conftest import REPO


def test_every_folder_of_python_files_is_a_package_setuptools_finds():
    from setuptools import find_packages

    found = set(find_packages(where=str(REPO), include=["domainbed_surgery", "domainbed_surgery.*"]))
    folders = {".".join(f.parent.relative_to(REPO).parts)
               for f in (REPO / "domainbed_surgery").rglob("*.py") if "__pycache__" not in f.parts}
    assert folders <= found, f"not packages (no __init__.py): {sorted(folders - found)}"
