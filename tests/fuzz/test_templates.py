"""No template reaches Python internals: SSTI attempts are refused by the sandbox with a clear
error, and any template text either renders or fails with `RenderError`, never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.rendering import RenderError, render, render_text
from parcours.definitions import Template
from tests.fuzz.conftest import FUZZ

CONTEXT: dict[str, Any] = {
    "profile": {"id": "ada", "email": "ada@example.com", "attributes": {"first_name": "Ada"}},
    "event": {"type": "signed_up", "properties": {"plan": "pro"}},
    "journey": {"id": "welcome", "version": 1, "node": "first"},
    "unsubscribe_url": "http://127.0.0.1/u",
}

# What a rendered internal would look like if the sandbox let it through.
LEAKS = ("<class", "<module", "<built-in", "<function", "<bound method", "__", "mappingproxy")

# Found by this suite and fixed in activities/rendering.py: errors raised inside the sandbox
# escaped as themselves, `*` and `**` were unbounded, and `str.format`/`format_map` printed
# objects' reprs.
SSTI = [
    "{{ dict['__class__']['mro']() }}",
    "{{ dict.mro() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ profile.__class__ }}",
    "{{ profile.items.__self__.__class__ }}",
    "{{ profile['__class__'] }}",
    "{{ profile|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ request.application.__globals__.__builtins__ }}",
    "{{ config.__class__.__init__.__globals__ }}",
    "{{ __builtins__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ '{0.__class__}'.format(profile) }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{.__globals__}'.format(cycler.__init__) }}",
    "{{ '%s'|format(''.__class__) }}",
    "{{ 'x'.format_map }}",
    "{% set x = ''.__class__ %}{{ x }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ profile.update({'a': 1}) }}",
    "{{ [].append(1) }}",
    "{{ event.properties.pop('plan') }}",
    "{{ 1/0 }}",
    "{{ 'a' * 1000000000000 }}",
    "{{ [1] * 1000000000000 }}",
    "{{ 10 ** 10 ** 10 ** 10 ** 10 }}",
    "{{ 10 ** 1000000 }}",
    "{{ range(10**12)|list }}",
    "{{ undefined_thing }}",
    "{{ profile.missing.deeper }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
]


def template(body: str) -> Template:
    return Template(id="t", channel="email", subject="s", body=body)


@pytest.mark.parametrize("source", SSTI)
def test_ssti_attempts_are_refused_with_a_clear_error(source: str) -> None:
    with pytest.raises(RenderError) as refused:
        render(template(source), CONTEXT)
    message = str(refused.value)
    assert message.startswith("template 't' body: "), message
    assert not any(leak in message for leak in ("<class", "<module", "<built-in", "<function"))
    # The context a template saw is the same after it: nothing mutated it.
    assert CONTEXT["event"]["properties"] == {"plan": "pro"}


ATTRIBUTES = st.sampled_from(
    [
        "__class__", "__mro__", "__subclasses__", "__globals__", "__builtins__", "__init__",
        "__dict__", "__self__", "__func__", "__code__", "__base__", "__bases__", "mro",
        "_TemplateReference__context", "func_globals", "gi_frame", "f_globals", "format",
        "format_map", "items", "keys", "pop", "update", "__getitem__", "__reduce__",
    ]
)  # fmt: skip
ROOTS = st.sampled_from(
    ["''", "()", "[]", "{}", "profile", "event", "journey", "cycler", "joiner", "namespace",
     "lipsum", "range", "self", "loop", "dict", "unsubscribe_url"]
)  # fmt: skip
chains = st.builds(
    lambda root, attributes, subscript: (
        root + "".join(f"['{a}']" if subscript else f".{a}" for a in attributes)
    ),
    ROOTS,
    st.lists(ATTRIBUTES, min_size=1, max_size=4),
    st.booleans(),
)


@FUZZ
@given(chain=chains)
def test_no_attribute_chain_reaches_python_internals(chain: str) -> None:
    for source in (
        f"{{{{ {chain} }}}}",
        f"{{{{ {chain}() }}}}",
        f"{{{{ '{{0}}'.format({chain}) }}}}",
    ):
        try:
            out = render_text("fuzz", source, CONTEXT)
        except RenderError as exc:
            assert str(exc).startswith("fuzz: ") and str(exc) != "fuzz: "
            continue
        # What did render is plain data: the context's own values, or an empty call.
        assert not any(leak in out for leak in LEAKS), (source, out)


# Template text built from Jinja's own syntax and a little data: any of it renders or fails
# with RenderError.
pieces = st.sampled_from(
    ["{{", "}}", "{%", "%}", "{#", "#}", " if ", " for ", " in ", " endif ", " endfor ", " set ",
     " macro ", " call ", " import ", " include ", " extends ", " block ", "|", "(", ")", "[",
     "]", ".", ",", "'", '"', "~", "*", "**", "/", "//", "%", "-", "+", "0", "1", "-1", "1e308",
     "x", "profile", "event", "journey", "attributes", "first_name", "default", "upper",
     "format", "int", "float", "round", "join", "list", "batch", "slice", "wordwrap",
     "truncate", "indent", "center", "replace", "sum", "range", "dictsort", "xmlattr", "none"]
)  # fmt: skip
sources = st.lists(st.one_of(pieces, st.text(max_size=3)), max_size=14).map("".join)


@FUZZ
@given(source=sources)
def test_any_template_text_renders_or_fails_with_render_error(source: str) -> None:
    try:
        render_text("fuzz", source, CONTEXT)
    except RenderError as exc:
        assert str(exc).startswith("fuzz: ")
