"""Shared by the benchmarks: each rewrites its own `##` section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.stack import stat_fields

ROOT = Path(__file__).resolve().parent.parent
DASH = "\N{EN DASH}"
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


def spread(values: Sequence[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}{DASH}{max(values):.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds a process has used (user + system), or None once it is gone."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))  # what `nproc` prints
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    kib = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    cpu = model.group(1).strip() if model else platform.processor() or "CPU unknown"
    ram = f"{int(kib.group(1)) / 2**20:.1f} GiB RAM" if kib else "RAM unknown"
    return f"`nproc` {cpus}, {cpu}, {ram}"


def command() -> str:
    """The command line that ran this benchmark, as a reader would type it again."""
    python = Path(sys.executable)
    shown = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
    return shlex.join([str(shown), *sys.argv])


SUMMARY = "## Goals at a glance"


def summarize(path: Path) -> str:
    """One table of every figure that has a goal, gathered from the sections the benchmarks
    wrote, with whether it is met; put first in the file."""
    rows: list[str] = []
    section = ""
    header: list[str] = []
    sections: list[str] = []  # every measured section, in order, to name those without goals
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section, header = line[3:], []
            if section != SUMMARY[3:]:
                sections.append(section)
            continue
        if not line.startswith("|") or section == SUMMARY[3:]:
            header = []  # a table ends at the first line that is not one of its rows
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not header:
            header = cells
            continue
        verdict = next((c for c in cells if c in ("met", "**missed**")), None)
        if verdict is None or "goal" not in header:
            continue
        goal = header.index("goal")
        figure = cells[0] + (f" ({cells[1]})" if header[1] == "store" else "")
        rows.append(f"| {section} | {figure} | {cells[goal]} | {cells[goal + 1]} | {verdict} |")
    missed = sum("**missed**" in r for r in rows)
    informational = [s for s in sections if not any(r.startswith(f"| {s} |") for r in rows)]
    verb, its = ("has", "its") if len(informational) == 1 else ("have", "their")
    others = (
        f" {' and '.join(informational)} {verb} no goals: {its} figures are informational."
        if informational
        else ""
    )
    table = "\n".join(
        [
            f"{SUMMARY}\n",
            f"{len(rows) - missed} goals met, {missed} missed. Each figure comes from the "
            "section below that measured it (median of the rounds; spreads, baselines, "
            f"machine and command there).{others}\n",
            "| benchmark | figure | goal | median | |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    return table + "\n"


def write_summary(path: Path) -> None:
    text = path.read_text()
    summary = summarize(path)
    if SUMMARY in text:
        write_docs(path, SUMMARY, summary)
        return
    title_end = text.index("\n## ") + 1 if "\n## " in text else len(text)
    path.write_text(text[:title_end] + summary + "\n" + text[title_end:])


if __name__ == "__main__":
    write_summary(ROOT / "docs" / "benchmarks.md")
    print((ROOT / "docs" / "benchmarks.md").read_text().split("\n## ")[1])
