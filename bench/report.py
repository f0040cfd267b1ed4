"""Shared by the benchmarks: each rewrites its own `##` section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmarks\n\nEach `##` section is written by the script it names: run that script again to refresh it.\n"


def write_docs(path: Path, section: str, text: str) -> None:
    """Replace `section` (its `## ` heading line) with `text`, keeping the title and every
    other section as they are."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{HEADER}\n{text}")
        return
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == section), None)
    if start is None:
        path.write_text("".join(lines).rstrip("\n") + "\n\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + text + ("\n" + rest if rest else ""))
