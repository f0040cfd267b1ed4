"""Templates rendered with Jinja2 in a sandbox, strict about undefined variables.

A template that does not render fails its delivery with the reason; it never fails a journey.
"""

from __future__ import annotations

import math
import types
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from activities.printed_templates import DICT_ATTRIBUTES, PrintedTemplate, planned
from activities.unsubscribe import unsubscribe_url
from parcours.definitions import Template
from parcours.records import Profile
from parcours.settings import Settings


class RenderError(Exception):
    pass


class Rendered(NamedTuple):
    # A tuple: a campaign page makes one per recipient, and a frozen dataclass took 1 µs.
    subject: str | None
    text: str
    html: str | None


# Errors a template can raise on its own inside the sandbox (`1/0`, a runaway macro, a huge
# `range|list`): each fails its delivery like any template error, never the activity.
_RENDER_ERRORS = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
    MemoryError,
)
# The largest string or list `*` may build, and the largest exponent and result of `**`.
_MAX_PRODUCT, _MAX_EXPONENT, _MAX_DIGITS = 100_000, 100, 1000


class _MessageSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, minus ways to show Python objects' insides (string
    formatting methods print any object's repr; a function printed instead of called) and to
    exhaust the worker (`'a' * 10**12`, `10 ** 10 ** 10`)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int):
            digits = abs(right) * math.log10(abs(left)) if abs(left) > 1 else 0
            if abs(right) > _MAX_EXPONENT or digits > _MAX_DIGITS:
                raise SecurityError(f"{left} ** {right} is too large")
        if operator == "*":
            sized, count = (left, right) if isinstance(left, str | list | tuple) else (right, left)
            sequence = isinstance(sized, str | list | tuple) and isinstance(count, int)
            if sequence and len(sized) * count > _MAX_PRODUCT:
                raise SecurityError(f"`*` would build over {_MAX_PRODUCT:,} items")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # A class (the `dict` global, or `dict['x']`, a generic alias that forwards to it)
        # would lead through `mro()` to every class in the worker.
        if isinstance(obj, type | types.GenericAlias):
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `profile.attributes.first_name` on the JSON a message sees: Jinja first asks the
        # dict for an attribute of that name, which raises and costs more than the rest of
        # the lookup. A plain dict has no attributes but its type's (no instance `__dict__`),
        # so for any other name Jinja's answer is the item, as here; a missing key still goes
        # Jinja's way to its strict undefined.
        if type(obj) is dict and attribute not in DICT_ATTRIBUTES and attribute in obj:
            return obj[attribute]
        # Jinja hands out a sandboxed `str.format` before asking `is_safe_attribute`.
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            return self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)


def _printable(value: Any) -> Any:
    if callable(value) and not isinstance(value, Undefined):
        raise SecurityError(f"{value.__class__.__name__} printed instead of called")
    return value


@cache
def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Sandboxed because template authors are not the people who run the worker; strict so a
    # misspelt variable fails loudly instead of sending "Hello ," to a customer.
    return _MessageSandbox(undefined=StrictUndefined, autoescape=autoescape, finalize=_printable)


def template_context(
    profile: Any, event: Any, journey_id: str | None, version: int | None, node_id: str | None
) -> dict[str, Any]:
    """What every template sees: the profile, the entry event and where in the journey it is.
    `profile` is a `Profile`, or its JSON form already (`profile_json`)."""
    return {
        "profile": profile if isinstance(profile, dict) else profile.model_dump(mode="json"),
        "event": event.model_dump(mode="json") if event else {},
        "journey": {"id": journey_id, "version": version, "node": node_id},
    }


def profile_json(row: Any) -> dict[str, Any]:
    """What `Profile.model_dump(mode="json")` gives for a profile row the store wrote (its JSON
    columns hold JSON already), built without a model: a campaign page builds a thousand."""
    return {
        "id": row.id,
        "email": row.email,
        "phone": row.phone,
        "timezone": row.timezone,
        "locale": row.locale,
        "attributes": row.attributes or {},
        "consent": row.consent or {},
        "device_tokens": row.device_tokens or [],
        "created_at": _json_time(row.created_at),
        "updated_at": _json_time(row.updated_at),
    }


def _json_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    # pydantic writes a zero offset as "Z".
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def message_context(
    settings: Settings,
    template: Template,
    profile: Profile | dict[str, Any],
    event: Any,
    journey_id: str | None = None,
    version: int | None = None,
    node_id: str | None = None,
) -> dict[str, Any]:
    """A message's context: the template context and the profile's unsubscribe link."""
    context = template_context(profile, event, journey_id, version, node_id)
    # Signing a link costs more than rendering a short message: only for templates using it.
    if _uses_unsubscribe_url(template):
        profile_id = profile["id"] if isinstance(profile, dict) else profile.id
        context["unsubscribe_url"] = unsubscribe_url(settings, profile_id, template.channel)
    return context


@lru_cache(maxsize=1024)
def _uses_unsubscribe_url(template: Template) -> bool:
    return any(
        "unsubscribe_url" in (part or "")
        for part in (template.subject, template.body, template.html)
    )


@lru_cache(maxsize=1024)
def _compiled(source: str, autoescape: bool) -> JinjaTemplate:
    # Compiling is most of a render's cost, and templates are immutable once published.
    return _environment(autoescape).from_string(source)


@lru_cache(maxsize=1024)
def _printed(source: str, autoescape: bool) -> PrintedTemplate | None:
    return planned(_environment(autoescape), source)


def render(template: Template, context: dict[str, Any]) -> Rendered:
    return renderer(template).render(context)


@lru_cache(maxsize=1024)
def renderer(template: Template) -> MessageRenderer:
    return MessageRenderer(template)


class MessageRenderer:
    """A message template's parts, compiled once, rendered for one recipient after another.

    The parts share one copy of the context: Jinja's own `render` copies the environment's
    globals into a fresh dict per call, which costs more than rendering a short subject, and a
    campaign page renders three parts for each of a thousand recipients. The templates still
    run in the sandboxed, strict environments of `_environment`; the shared dict is never
    written to (template code writes its own `Context.vars`). Parts that are only text and
    lookups are printed without Jinja where they can be (`printed_templates`).
    """

    def __init__(self, template: Template) -> None:
        self.template = template
        self.uses_unsubscribe_url = _uses_unsubscribe_url(template)
        self._parts = [
            (part, _compiled(source, autoescape), _printed(source, autoescape))
            if source is not None
            else (part, None, None)
            for part, source, autoescape in (
                ("subject", template.subject, False),
                ("body", template.body, False),
                ("html", template.html, True),
            )
        ]
        # Both environments have Jinja's default globals (range, dict, namespace...).
        self._globals = {
            name: value
            for _, compiled, _ in self._parts
            if compiled is not None
            for name, value in compiled.globals.items()
        }

        # What `render_profile` adds a profile to: the context of a message outside a journey.
        self._outside_journeys = {
            **self._globals,
            **template_context({}, None, None, None, None),
        }
        del self._outside_journeys["profile"]

    def render(self, context: dict[str, Any]) -> Rendered:
        return self._render({**self._globals, **context})

    def render_profile(self, settings: Settings, profile: dict[str, Any]) -> Rendered:
        """`render(message_context(settings, self.template, profile, None))`, for a message
        outside any journey: a campaign page renders a thousand, and builds the context's
        fixed parts only once. `profile` is the profile's JSON form (`profile_json`)."""
        shared = {**self._outside_journeys, "profile": profile}
        if self.uses_unsubscribe_url:
            shared["unsubscribe_url"] = unsubscribe_url(
                settings, profile["id"], self.template.channel
            )
        return self._render(shared)

    def _render(self, shared: dict[str, Any]) -> Rendered:
        # One loop, with no call or generator per part: a campaign page renders three parts
        # for each of its recipients.
        texts: list[str | None] = []
        for part, compiled, printed in self._parts:
            text = None
            # Text and lookups only: printed without Jinja, unless the lookups need its answer.
            if printed is not None:
                text = printed.render(shared)
            if text is None and compiled is not None:
                text = self._jinja(shared, part, compiled)
            texts.append(text)
        subject, text, html = texts
        return Rendered(subject, text or "", html)

    def _jinja(self, shared: dict[str, Any], part: str, compiled: JinjaTemplate) -> str:
        environment = compiled.environment
        try:
            context = environment.context_class(environment, shared, compiled.name, compiled.blocks)
            return environment.concat(compiled.root_render_func(context))
        except _RENDER_ERRORS as exc:
            raise RenderError(f"template {self.template.id!r} {part}: {exc}") from exc


def render_text(name: str, source: str, context: dict[str, Any]) -> str:
    """One template string outside a message (a webhook body), with the same sandbox."""
    try:
        return _compiled(source, False).render(context)
    except _RENDER_ERRORS as exc:
        raise RenderError(f"{name}: {exc}") from exc
