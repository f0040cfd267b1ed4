"""Workflow modules are compiled once per process, however often the sandbox imports them."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from parcours import compiled


def test_a_module_imported_again_is_not_compiled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "often_imported.py").write_text("VALUE = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ to fall back on
    compiles: list[str] = []
    original = importlib.machinery.SourceFileLoader.source_to_code

    def counting(self: Any, data: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        compiles.append(str(path))
        return original(self, data, path, *args, **kwargs)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "source_to_code", counting)
    compiled.compile_once(["often_imported"])
    modules = []
    for _ in range(3):  # what the sandbox does for each workflow run
        sys.modules.pop("often_imported", None)
        modules.append(importlib.import_module("often_imported"))
    sys.modules.pop("often_imported", None)

    assert compiles == [str(tmp_path / "often_imported.py")]
    # Each import still makes a module of its own: runs share code, never state.
    assert len({id(m) for m in modules}) == 3
    assert modules[0].VALUE is not modules[1].VALUE


def test_an_edited_module_is_compiled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "edited_module.py"
    source.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    compiled.compile_once(["edited_module"])
    assert importlib.import_module("edited_module").VALUE == 1
    sys.modules.pop("edited_module")
    source.write_text("VALUE = 2\n")
    stat = source.stat()
    os.utime(source, (stat.st_atime, stat.st_mtime + 10))
    assert importlib.import_module("edited_module").VALUE == 2
    sys.modules.pop("edited_module")
