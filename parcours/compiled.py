"""Workflow modules compiled once per process, not once per workflow run.

Temporal's sandbox imports a workflow's module afresh for every run, to keep runs apart.
Python normally makes that cheap with the bytecode cache in `__pycache__/`, but where no
cache is written or readable (`PYTHONDONTWRITEBYTECODE=1`, common in container images, or a
read-only install run from source) every run compiles the module from source again: for
workflows/journey.py that was most of what starting a journey entry cost the worker.

The compiled code object is immutable and the sandbox still executes it into a fresh module
for each run, so isolation between runs is unchanged; only the compiling is shared.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterable, Sequence
from types import CodeType, ModuleType

# path -> (source modification time, code): a module edited while the worker runs is
# compiled again, as Python's own cache would do.
_code: dict[str, tuple[float, CodeType]] = {}


class _CachedCodeLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        mtime = self.path_stats(self.path)["mtime"]
        cached = _code.get(self.path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        code = super().get_code(fullname)
        assert code is not None  # a source file always compiles to code or raises
        _code[self.path] = (mtime, code)
        return code


class _CompileOnceFinder(importlib.abc.MetaPathFinder):
    """Finds the named modules as Python would, then loads them through the cache."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _CachedCodeLoader(spec.loader.name, spec.loader.path)
        return spec


_finder = _CompileOnceFinder()
_lock = threading.Lock()


def compile_once(module_names: Iterable[str]) -> None:
    """Keep the compiled code of these modules (and their parent packages) for the process."""
    with _lock:
        for name in module_names:
            parts = name.split(".")
            _finder.names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
