"""Templates rendered with Jinja2 in a sandbox, strict about undefined variables.

A template that does not render fails its delivery with the reason; it never fails a journey.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import ImmutableSandboxedEnvironment

from activities.unsubscribe import unsubscribe_url
from parcours.definitions import Template
from parcours.records import Profile
from parcours.settings import Settings


class RenderError(Exception):
    pass


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None


@cache
def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Sandboxed because template authors are not the people who run the worker; strict so a
    # misspelt variable fails loudly instead of sending "Hello ," to a customer.
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)


def template_context(
    profile: Any, event: Any, journey_id: str | None, version: int | None, node_id: str | None
) -> dict[str, Any]:
    """What every template sees: the profile, the entry event and where in the journey it is."""
    return {
        "profile": profile.model_dump(mode="json"),
        "event": event.model_dump(mode="json") if event else {},
        "journey": {"id": journey_id, "version": version, "node": node_id},
    }


def message_context(
    settings: Settings,
    template: Template,
    profile: Profile,
    event: Any,
    journey_id: str | None = None,
    version: int | None = None,
    node_id: str | None = None,
) -> dict[str, Any]:
    """A message's context: the template context and the profile's unsubscribe link."""
    context = template_context(profile, event, journey_id, version, node_id)
    # Signing a link costs more than rendering a short message: only for templates using it.
    if _uses_unsubscribe_url(template):
        context["unsubscribe_url"] = unsubscribe_url(settings, profile.id, template.channel)
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


def render(template: Template, context: dict[str, Any]) -> Rendered:
    def one(part: str, source: str | None, autoescape: bool = False) -> str | None:
        if source is None:
            return None
        try:
            return _compiled(source, autoescape).render(context)
        except TemplateError as exc:
            raise RenderError(f"template {template.id!r} {part}: {exc}") from exc

    return Rendered(
        subject=one("subject", template.subject),
        text=one("body", template.body) or "",
        html=one("html", template.html, autoescape=True),
    )


def render_text(name: str, source: str, context: dict[str, Any]) -> str:
    """One template string outside a message (a webhook body), with the same sandbox."""
    try:
        return _compiled(source, False).render(context)
    except TemplateError as exc:
        raise RenderError(f"{name}: {exc}") from exc
