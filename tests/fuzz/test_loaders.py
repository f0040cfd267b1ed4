"""The loaders never crash: any journey file text, any mutation of a valid example, is loaded
or rejected with `LoadError`s that name the field at fault."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from parcours.loader import definition_files, load_documents, load_paths
from tests.conftest import EXAMPLES
from tests.fuzz.conftest import FUZZ

EXAMPLE_TEXTS = [p.read_text() for p in definition_files([EXAMPLES])]
EXAMPLE_DOCUMENTS = [
    document for text in EXAMPLE_TEXTS for document in yaml.safe_load_all(text) if document
]
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
# Field names the formats use, so a mutation often lands on a real field.
NAMES = st.sampled_from(
    ["kind", "id", "type", "next", "nodes", "start", "entry", "event", "duration", "channel",
     "template", "segment", "rule", "branches", "default", "until", "subject", "body", "html",
     "attribute", "op", "value", "all", "any", "not", "schedule", "audience", "exit", "x"]
)  # fmt: skip


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    document = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(document)))
        if not where:
            continue
        parent = document
        for part in where[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "retype"]))
        if action == "replace":
            parent[where[-1]] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(NAMES)] = draw(JSON_VALUES)
        elif action == "retype":
            parent[where[-1]] = draw(st.sampled_from([None, 0, "", [], {}, True, "x" * 300]))
    return document


@FUZZ
@given(documents=st.lists(st.one_of(mutated_documents(), JSON_VALUES), min_size=1, max_size=3))
def test_mutated_documents_load_or_name_the_field(documents: list[Any]) -> None:
    result = load_documents((f"doc{i}", d) for i, d in enumerate(documents))
    for error in result.errors:
        assert error.message, error
        assert error.file in {f"doc{i}" for i in range(len(documents))}, error
        if isinstance(documents[int(error.file[3:])], dict):
            assert error.path, f"no field named: {error}"


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "insert", "truncate"]))
        if action == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif action == "insert":
            text = text[:at] + draw(st.sampled_from(
                [":", "- ", "\n", "  ", "{", "}", "[", "]", "'", '"', "&a", "*a", "!!python/object:os.system", "---\n", "\t", "\x00", "{{", "%", "@", "`"]
            )) + text[at:]  # fmt: skip
        else:
            text = text[:at]
    return text


@FUZZ
@given(text=mutated_texts(), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_file_text_loads_or_is_rejected(tmp_path: Path, text: str, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    if suffix == ".json":
        try:
            text = json.dumps(next(iter(yaml.safe_load_all(text))))
        except yaml.YAMLError:
            pass  # then the text itself is the (invalid) JSON
        except StopIteration:
            text = ""
    path.write_text(text)
    result = load_paths([path])
    assert result.definitions or result.errors
    for error in result.errors:
        assert error.file == str(path) and error.message, error
