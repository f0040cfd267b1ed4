"""Templates that only print values, rendered by plain lookups to the text Jinja would give.

Most message templates are text with `{{ profile.attributes.first_name }}` in it. Jinja renders
each part through a fresh `Context`, its sandbox's lookups and its finalizer: a campaign page
renders three parts for each of its recipients, and that was a tenth of the page's CPU. A
template made only of literal text and lookups (`a.b`, `a["b"]`) is planned once as those
pieces and printed by dict lookups instead.

A plan answers only where Jinja's answer is certain: a key present in a plain dict (by
attribute, a name that is not one of dict's own attributes, as the sandbox's `getattr` has it),
ending at a string, number, boolean or null, printed with `str` or, in an autoescaping
template, `markupsafe.escape`, as Jinja's generated code does. For anything else (a missing key,
a list, a method's name) `render` returns None, and the caller renders the template with Jinja,
which gives the text or raises the error it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes
from markupsafe import escape

# Every attribute a dict instance can have: its type's and `object`'s.
DICT_ATTRIBUTES = frozenset(dir(dict))
# What a lookup may end at: JSON's scalars, which Jinja's finalizer lets through unchanged.
_PRINTED = frozenset({str, int, float, bool, type(None)})
# Names Jinja's generated code gives a meaning of its own, whatever the context holds.
_SPECIAL_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})
_MISSING = object()


@dataclass(frozen=True, slots=True)
class PrintedTemplate:
    # Literal text, or a lookup: the keys from the context down, each read from a plain dict.
    pieces: tuple[str | tuple[str, ...], ...]
    autoescape: bool

    def render(self, context: dict[str, Any]) -> str | None:
        """The template's text for `context` (the dict its Jinja context would have as parent),
        or None where only Jinja can say."""
        out: list[str] = []
        for piece in self.pieces:
            if type(piece) is str:
                out.append(piece)
                continue
            value: Any = context
            for key in piece:
                if type(value) is not dict:
                    return None
                value = value.get(key, _MISSING)
                if value is _MISSING:
                    return None
            if type(value) not in _PRINTED:
                return None
            out.append(escape(value) if self.autoescape else str(value))
        return "".join(out)


def planned(environment: Environment, source: str) -> PrintedTemplate | None:
    """`source` as literal text and lookups, or None if it does anything else."""
    if not isinstance(environment.autoescape, bool):
        return None
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError:
        return None
    pieces: list[str | tuple[str, ...]] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append(child.data)
            elif (lookup := _lookup(child)) is not None:
                pieces.append(lookup)
            else:
                return None
    return PrintedTemplate(tuple(pieces), environment.autoescape)


def _lookup(node: nodes.Node) -> tuple[str, ...] | None:
    """The keys a lookup reads from the context down, if a plan can read them: never an
    attribute named like one of dict's own (Jinja's sandbox gives the method, and refuses to
    print it)."""
    keys: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            if node.attr in DICT_ATTRIBUTES:
                return None
            keys.append(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and type(node.arg.value) is str
        ):
            keys.append(node.arg.value)
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name in _SPECIAL_NAMES:
                return None
            keys.append(node.name)
            return tuple(reversed(keys))
        else:
            return None
        node = node.node
