"""Templates printed without Jinja (`activities.printed_templates`) print Jinja's text: for any
template of text and lookups and any JSON context, a plan prints what Jinja renders, or leaves
the template to Jinja. Where Jinja fails, a plan never prints."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError

from activities.printed_templates import PrintedTemplate, planned
from activities.rendering import _RENDER_ERRORS, RenderError, _environment, renderer
from parcours.definitions import Template
from tests.fuzz.conftest import FUZZ

# Keys a profile may really have, and the names of dict's methods and internals.
KEYS = ["first_name", "city", "score", "items", "keys", "get", "values", "__class__", "é"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(alphabet="ab <>&\"'é\n", max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=8,
)
CONTEXTS = st.fixed_dictionaries(
    {
        "profile": st.dictionaries(st.sampled_from(["attributes", *KEYS]), JSON, max_size=4),
        "event": st.dictionaries(st.sampled_from(KEYS), JSON, max_size=2),
        "unsubscribe_url": st.just("http://127.0.0.1/u?a=1&b=2"),
    }
)
STEPS = st.tuples(st.sampled_from(["attributes", *KEYS]), st.booleans()).map(
    lambda step: f".{step[0]}" if step[1] else f"[{step[0]!r}]"
)
LOOKUPS = st.builds(
    lambda root, steps, trim: f"{{{{{'-' if trim else ''} {root}{''.join(steps)} }}}}",
    st.sampled_from(["profile", "event", "unsubscribe_url", "missing", "self", "range"]),
    st.lists(STEPS, max_size=3),
    st.booleans(),
)
# Literal text, with what starts or ends a tag now and then.
TEXT = st.text(alphabet="ab <>&\"'\n{}%#-", max_size=6)


def jinja(source: str, autoescape: bool, context: dict[str, Any]) -> str | None:
    """What Jinja renders, or None where it fails."""
    try:
        return _environment(autoescape).from_string(source).render(context)
    except _RENDER_ERRORS:
        return None


def plan(source: str, autoescape: bool) -> PrintedTemplate:
    printed = planned(_environment(autoescape), source)
    assert printed is not None, source
    return printed


@FUZZ
@given(
    pieces=st.lists(st.one_of(TEXT, LOOKUPS), max_size=6),
    context=CONTEXTS,
    autoescape=st.booleans(),
)
def test_a_plan_prints_what_jinja_renders_or_leaves_it_to_jinja(
    pieces: list[str], context: dict[str, Any], autoescape: bool
) -> None:
    source = "".join(pieces)
    environment = _environment(autoescape)
    try:
        compiled = environment.from_string(source)
    except TemplateSyntaxError:
        assert planned(environment, source) is None
        return
    printed = planned(environment, source)
    if printed is None:
        return
    # What a message renderer hands a template: the context over Jinja's globals.
    answer = printed.render({**compiled.globals, **context})
    if answer is not None:
        assert answer == jinja(source, autoescape, context), source


CONTEXT: dict[str, Any] = {
    "profile": {
        "id": "ada",
        "attributes": {"first_name": 'Ada <&> "O\'Neil"', "score": 1.5, "vip": True},
        "timezone": None,
        "device_tokens": ["t1"],
        "keys": "a key named like a method",
    },
    "unsubscribe_url": "http://127.0.0.1/u?a=1&b=2",
}


@pytest.mark.parametrize("autoescape", [False, True])
@pytest.mark.parametrize(
    "source",
    [
        "",
        "Hello {{ profile.attributes.first_name }}, here is your week.",
        "{{ profile['attributes']['first_name'] }} {{ profile.attributes.score }}",
        "{{ profile.attributes.vip }}/{{ profile.timezone }}/{{ profile.id }}",
        "{{- profile.id -}}  {# a comment #} {% raw %}{{ kept }}{% endraw %}\n",
        "{{ profile['keys'] }} <a href=\"{{ unsubscribe_url }}\">stop</a>",
    ],
)
def test_text_and_lookups_of_present_values_are_printed_as_jinja_renders_them(
    source: str, autoescape: bool
) -> None:
    printed = plan(source, autoescape).render(CONTEXT)
    assert printed is not None
    assert printed == jinja(source, autoescape, CONTEXT)


@pytest.mark.parametrize(
    "source",
    [
        "{{ profile.attributes.first_name|upper }}",
        "{% if profile.id %}x{% endif %}",
        "{{ 3 }}",
        "{{ 'a' }}",
        "{{ profile.device_tokens[0] }}",
        "{{ self }}",
        "{{ loop }}",
        "{{ profile.id ~ 'x' }}",
        "{% set x = 1 %}{{ x }}",
        "{{ unclosed",
        "{{ profile.keys }}",  # dict's method, not the key: the sandbox refuses to print it
    ],
)
def test_anything_but_text_and_lookups_is_left_to_jinja(source: str) -> None:
    assert planned(_environment(False), source) is None


@pytest.mark.parametrize(
    "source",
    [
        "{{ profile.attributes.missing }}",
        "{{ profile.device_tokens }}",
        "{{ profile.attributes }}",
        "{{ range }}",
    ],
)
def test_a_lookup_only_jinja_can_answer_is_not_printed(source: str) -> None:
    assert plan(source, True).render(CONTEXT) is None


def test_a_message_renderer_prints_planned_parts_and_fails_others_as_jinja_does() -> None:
    message = Template(
        id="t",
        channel="email",
        subject="For {{ profile.attributes.first_name }}",
        body="{{ profile.attributes.missing }}",
        html="<p>{{ profile.attributes.first_name }}</p>",
    )
    with pytest.raises(RenderError, match="template 't' body: 'dict object' has no attribute"):
        renderer(message).render(CONTEXT)
    ok = message.model_copy(update={"body": "Hi {{ profile.attributes.first_name }}"})
    rendered = renderer(ok).render(CONTEXT)
    assert rendered.subject == 'For Ada <&> "O\'Neil"'
    assert rendered.html == "<p>Ada &lt;&amp;&gt; &#34;O&#39;Neil&#34;</p>"
