"""The README and the presets name files that exist (modules moved once and left stale paths)."""
from __future__ import annotations

import re

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "sweeps").glob("*.sh"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_named_package_paths_exist(document):
    named = set(re.findall(r"domainbed_surgery/[\w/]+\.(?:py|pth)", document.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{document.name} names missing files: {missing}"
