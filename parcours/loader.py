"""Reads definition files (YAML or JSON, several documents per file) into validated models.

Every error names the file, the line when known, the path inside the document
(`nodes[3].next`) and what was expected. Nothing is returned as loaded when any file has an
error, so a caller can publish all or nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from parcours.definitions import (
    KINDS,
    NODE_TYPES,
    Campaign,
    Definition,
    Journey,
    Segment,
    Template,
)
from parcours.segment_checks import validate_segments
from parcours.validation import validate_campaign, validate_journey

SUFFIXES = (".yaml", ".yml", ".json")
_ADAPTER: TypeAdapter[Segment | Template | Journey | Campaign] = TypeAdapter(Definition)


@dataclass(frozen=True)
class LoadError:
    file: str
    path: str
    message: str
    document: int | None = None  # 1-based, given when a file holds several documents
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        if self.document is not None:
            where += f" (document {self.document})"
        return f"{where}: {self.path or '(document)'}: {self.message}"


@dataclass(frozen=True)
class Loaded:
    definition: Segment | Template | Journey | Campaign
    file: str
    document: int | None = None
    node: yaml.Node | None = field(default=None, compare=False, repr=False)  # for line numbers


@dataclass
class LoadResult:
    definitions: list[Loaded] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)

    @property
    def templates(self) -> dict[str, Template]:
        return {
            d.definition.id: d.definition
            for d in self.definitions
            if isinstance(d.definition, Template)
        }

    @property
    def segments(self) -> dict[str, Segment]:
        return {
            d.definition.id: d.definition
            for d in self.definitions
            if isinstance(d.definition, Segment)
        }

    @property
    def journeys(self) -> list[Journey]:
        return [d.definition for d in self.definitions if isinstance(d.definition, Journey)]

    @property
    def campaigns(self) -> list[Campaign]:
        return [d.definition for d in self.definitions if isinstance(d.definition, Campaign)]


class LoadFailed(Exception):
    def __init__(self, errors: Sequence[LoadError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = list(errors)


def definition_files(paths: Iterable[Path]) -> list[Path]:
    """The files to read, directories walked recursively in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES))
        else:
            files.append(path)
    return files


def load_paths(
    paths: Iterable[Path],
    known_templates: Mapping[str, Template] | None = None,
    known_segments: Mapping[str, Segment] | None = None,
) -> LoadResult:
    """Load and cross-check every definition under `paths`.

    `known_*` are the definitions already published, so a journey may use a template (and a
    segment another segment) applied earlier; definitions in these files take precedence.
    """
    result = LoadResult()
    for path in definition_files(paths):
        _load_file(path, result)
    return _cross_check(result, known_templates, known_segments)


def load_documents(
    documents: Iterable[tuple[str, Any]],
    known_templates: Mapping[str, Template] | None = None,
    known_segments: Mapping[str, Segment] | None = None,
) -> LoadResult:
    """Load and cross-check definitions already parsed (an HTTP body, say), each named by
    where it came from; the same checks and the same errors as `load_paths`."""
    result = LoadResult()
    for name, data in documents:
        _load_document(name, data, None, None, result)
    return _cross_check(result, known_templates, known_segments)


def _cross_check(
    result: LoadResult,
    known_templates: Mapping[str, Template] | None,
    known_segments: Mapping[str, Segment] | None,
) -> LoadResult:
    _check_duplicates(result)
    templates = {**(known_templates or {}), **result.templates}
    all_segments = {**(known_segments or {}), **result.segments}
    segment_problems = validate_segments(result.segments, known_segments or {})
    for loaded in result.definitions:
        for problem in (
            segment_problems.get(loaded.definition.id, [])
            if isinstance(loaded.definition, Segment)
            else []
        ):
            line = _line(loaded.node, parse_path(problem.path))
            result.errors.append(
                LoadError(loaded.file, problem.path, problem.message, loaded.document, line)
            )
        problems = (
            validate_journey(loaded.definition, templates, all_segments)
            if isinstance(loaded.definition, Journey)
            else validate_campaign(loaded.definition, templates, all_segments)
            if isinstance(loaded.definition, Campaign)
            else []
        )
        if problems:
            for problem in problems:
                line = _line(loaded.node, parse_path(problem.path))
                result.errors.append(
                    LoadError(loaded.file, problem.path, problem.message, loaded.document, line)
                )
    if result.errors:
        result.definitions.clear()
    else:
        # Templates first so whatever uses them is published after them.
        result.definitions.sort(key=lambda d: KINDS.index(d.definition.kind))
    return result


def _load_file(path: Path, result: LoadResult) -> None:
    name = str(path)
    if not path.exists():
        result.errors.append(LoadError(name, "", "no such file or directory"))
        return
    if path.suffix not in SUFFIXES:
        result.errors.append(
            LoadError(name, "", f"expected a file ending in {', '.join(SUFFIXES)}")
        )
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.errors.append(LoadError(name, "", f"cannot read: {exc}"))
        return
    try:
        if path.suffix == ".json":
            documents: list[tuple[Any, yaml.Node | None]] = [(json.loads(text), None)]
        else:
            nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
            documents = [(yaml.load(yaml.serialize(n), Loader=yaml.SafeLoader), n) for n in nodes]
    except json.JSONDecodeError as exc:
        result.errors.append(LoadError(name, "", f"invalid JSON: {exc.msg}", line=exc.lineno))
        return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        result.errors.append(
            LoadError(name, "", f"invalid YAML: {problem}", line=mark.line + 1 if mark else None)
        )
        return
    if not documents:
        result.errors.append(LoadError(name, "", "the file holds no definition"))
    many = len(documents) > 1
    for number, (data, node) in enumerate(documents, start=1):
        _load_document(name, data, node, number if many else None, result)


def _load_document(
    name: str, data: Any, node: yaml.Node | None, document: int | None, result: LoadResult
) -> None:
    if not isinstance(data, dict):
        result.errors.append(
            LoadError(
                name, "", "expected a mapping with `kind` and `id`", document, _line(node, [])
            )
        )
        return
    try:
        definition = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        for error in exc.errors():
            segments = _segments(data, error["loc"])
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                segments.append("kind" if not segments else "type")
            result.errors.append(
                LoadError(
                    name, _format_path(segments), _message(error), document, _line(node, segments)
                )
            )
        return
    result.definitions.append(Loaded(definition, name, document, node))


def _check_duplicates(result: LoadResult) -> None:
    seen: dict[tuple[str, str], Loaded] = {}
    for loaded in result.definitions:
        key = (loaded.definition.kind, loaded.definition.id)
        if key in seen:
            first = seen[key]
            result.errors.append(
                LoadError(
                    loaded.file,
                    "id",
                    f"{key[0]} {key[1]!r} is also defined in {first.file}"
                    + (f" (document {first.document})" if first.document else ""),
                    loaded.document,
                )
            )
        else:
            seen[key] = loaded


def _segments(data: Any, loc: tuple[int | str, ...]) -> list[int | str]:
    """The error's location in the document, without the union tags pydantic inserts."""
    segments: list[int | str] = []
    current = data
    for part in loc:
        if (
            isinstance(part, str)
            and isinstance(current, dict)
            and part not in current
            and (part in current.values() or part.endswith(" rule"))
        ):  # a discriminator tag such as `journey`, `wait` or `attribute rule`
            continue
        segments.append(part)
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return segments


def _format_path(segments: Sequence[int | str]) -> str:
    text = ""
    for part in segments:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def parse_path(path: str) -> list[int | str]:
    return [
        int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)
    ]


_PATTERN_HINTS = {
    "time": "HH:MM on a 24-hour clock, e.g. 09:00",
    "local_time": "HH:MM on a 24-hour clock, e.g. 09:00",
    "cron": "five cron fields (minute hour day-of-month month day-of-week), e.g. 0 9 * * MON",
    "rate_limit": "a count per second, minute or hour, e.g. 200/s",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check its spelling against the format in SPEC §2)"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field, expected = (
            ("kind", KINDS) if ctx.get("discriminator") == "'kind'" else ("type", NODE_TYPES)
        )
        if kind == "union_tag_not_found":
            return f"`{field}` is missing: expected one of {', '.join(expected)}"
        return f"unknown {field} {ctx.get('tag')!r}: expected one of {', '.join(expected)}"
    if kind == "string_pattern_mismatch":
        field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "")
        hint = _PATTERN_HINTS.get(field, "letters, digits, '-', '_' or '.'")
        return f"{error['input']!r} is not a valid {field or 'value'}: expected {hint}"
    if kind == "literal_error":
        return f"got {error['input']!r}, expected {ctx.get('expected')}"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _line(node: yaml.Node | None, segments: Sequence[int | str]) -> int | None:
    """The 1-based line of the value at `segments`, or of its nearest parent that exists."""
    if node is None:
        return None
    for part in segments:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1
