"""A Go text/template renderer for the subset graftline's Modelfile TEMPLATE is written in, and
the Modelfile read back: Ollama renders TEMPLATE with Go's text/template, and neither Go nor
Ollama is installed here.

Supported, with Go's semantics: literal text; actions `{{ … }}` with the trim markers `{{- ` and
` -}}` (all adjacent ASCII white space of the neighbouring text removed); string literals
(`{{ "{{" }}`, interpreted like Go's strconv.Unquote, and raw `` `…` ``); `.Content` and `.Role`
of the current message; `range .Messages` (the dot becomes each message); `if eq .Role "x"`
with `else if …`, `else` and `end`; comments `{{/* … */}}`. Anything else raises, so a
template graftline starts to emit beyond this subset fails the tests instead of rendering
wrongly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTION = re.compile(r"{{(- )?(.*?)( -)?}}", re.S)
GO_SPACE = " \t\r\n"


@dataclass
class Node:
    kind: str  # text, value, range, if
    value: str = ""
    body: list[Node] = field(default_factory=list)
    otherwise: list[Node] = field(default_factory=list)  # if: the else branch


def _lex(template: str) -> list[tuple[str, str]]:
    pieces: list[tuple[str, str]] = []
    position = 0
    for match in ACTION.finditer(template):
        text = template[position:match.start()]
        if match.group(1):
            text = text.rstrip(GO_SPACE)
        if pieces and pieces[-1][0] == "trim":
            pieces.pop()
            text = text.lstrip(GO_SPACE)
        pieces.append(("text", text))
        action = match.group(2).strip()
        if not action.startswith("/*"):
            pieces.append(("action", action))
        if match.group(3):
            pieces.append(("trim", ""))
        position = match.end()
    text = template[position:]
    if pieces and pieces[-1][0] == "trim":
        pieces.pop()
        text = text.lstrip(GO_SPACE)
    pieces.append(("text", text))
    return pieces


def _parse(pieces: list[tuple[str, str]], index: int) -> tuple[list[Node], int, str]:
    """Nodes until an unmatched `else…`/`end`; returns (nodes, next index, that action)."""
    nodes: list[Node] = []
    while index < len(pieces):
        kind, value = pieces[index]
        index += 1
        if kind == "text":
            if value:
                nodes.append(Node("text", value))
        elif value == "end" or value == "else" or value.startswith("else if "):
            return nodes, index, value
        elif value.startswith("range "):
            body, index, stop = _parse(pieces, index)
            if stop != "end":
                raise ValueError(f"{{{{ range }}}} closed by {{{{ {stop} }}}}")
            nodes.append(Node("range", value[len("range "):].strip(), body))
        elif value.startswith("if "):
            node, index = _parse_if(value[len("if "):].strip(), pieces, index)
            nodes.append(node)
        else:
            nodes.append(Node("value", value))
    return nodes, index, ""


def _parse_if(condition: str, pieces: list[tuple[str, str]], index: int) -> tuple[Node, int]:
    body, index, stop = _parse(pieces, index)
    node = Node("if", condition, body)
    if stop.startswith("else if "):
        # Go: `{{ else if C }}` is `{{ else }}{{ if C }}…{{ end }}` sharing the one `end`
        nested, index = _parse_if(stop[len("else if "):].strip(), pieces, index)
        node.otherwise = [nested]
    elif stop == "else":
        node.otherwise, index, stop = _parse(pieces, index)
        if stop != "end":
            raise ValueError(f"{{{{ else }}}} closed by {{{{ {stop} }}}}")
    elif stop != "end":
        raise ValueError(f"{{{{ if {condition} }}}} is never closed")
    return node, index


def _string(literal: str) -> str:
    if literal.startswith("`") and literal.endswith("`") and len(literal) >= 2:
        return literal[1:-1]
    if literal.startswith('"') and literal.endswith('"'):
        return str(json.loads(literal))  # Go's escapes for what graftline writes (\", \\, \n)
    raise ValueError(f"unsupported action {{{{ {literal} }}}}")


def _field(name: str, dot: Any) -> Any:
    if not isinstance(dot, dict) or not name.startswith("."):
        raise ValueError(f"unsupported field {name!r} on {type(dot).__name__}")
    key = name[1:]
    if key not in dot:
        raise ValueError(f"no field {name} (have {sorted(dot)})")
    return dot[key]


def _true(condition: str, dot: Any) -> bool:
    match = re.fullmatch(r"eq (\.\w+) (\".*\"|`.*`)", condition)
    if match is None:
        raise ValueError(f"unsupported condition {condition!r}")
    return bool(_field(match.group(1), dot) == _string(match.group(2)))


def _render(nodes: list[Node], dot: Any) -> str:
    out = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "value":
            value = node.value
            out.append(_string(value) if value[:1] in "\"`" else str(_field(value, dot)))
        elif node.kind == "range":
            out += [_render(node.body, item) for item in _field(node.value, dot)]
        else:
            out.append(_render(node.body if _true(node.value, dot) else node.otherwise, dot))
    return "".join(out)


def render(template: str, messages: list[dict[str, str]]) -> str:
    """TEMPLATE rendered as Ollama renders a chat request's `.Messages`."""
    nodes, _, stop = _parse(_lex(template), 0)
    if stop:
        raise ValueError(f"unmatched {{{{ {stop} }}}}")
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return _render(nodes, data)


@dataclass(frozen=True)
class Modelfile:
    source: str
    template: str | None
    stops: tuple[str, ...]


def read_modelfile(path: Path) -> Modelfile:
    text = path.read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    stops = tuple(json.loads(v) for v in re.findall(r"^PARAMETER stop (.+)$", text, re.M))
    source = re.search(r"^FROM (.+)$", text, re.M)
    assert source is not None, text
    return Modelfile(source.group(1), template.group(1) if template else None, stops)
