"""An Ollama Modelfile whose TEMPLATE reproduces the model's own Jinja chat template.

The Jinja template is rendered with marker messages to find the literal text around each role's
content (`chat_parts`); the Go template repeats that text around `.Content` for each message in
`.Messages`, then the generation prompt. The text before the first message (often the BOS
token) is kept when the GGUF does not add BOS itself, so that Ollama's prompt equals
`apply_chat_template(..., add_generation_prompt=True)`. Stop tokens are the model's EOS tokens
and the text that ends an assistant turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class ChatParts:
    preamble: str
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    has_system: bool


def chat_parts(tokenizer: Any) -> ChatParts | None:
    """The literal text around each role's content, found by rendering the tokenizer's Jinja
    template with marker messages. None when the template is not of that simple shape."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    u1, a1, u2, s1 = "\x01U1\x01", "\x01A1\x01", "\x01U2\x01", "\x01S1\x01"

    def render(messages: list[tuple[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                             tokenize=False, add_generation_prompt=generation)

    try:
        t1 = render([("user", u1)])
        t2 = render([("user", u1), ("assistant", a1)])
        t3 = render([("user", u1), ("assistant", a1), ("user", u2)])
        t4 = render([("user", u1)], generation=True)
    except Exception:  # a template that refuses these conversations is not of this shape
        return None
    if not (t2.startswith(t1) and t3.startswith(t2) and t4.startswith(t1)):
        return None
    user_suffix = t1.split(u1, 1)[1]
    assistant_prefix, assistant_suffix = t2[len(t1):].split(a1, 1)
    user_prefix = t3[len(t2):].split(u2, 1)[0]
    head = t1.split(u1, 1)[0]
    if not head.endswith(user_prefix):
        return None
    preamble = head[: len(head) - len(user_prefix)]
    system_prefix = system_suffix = ""
    has_system = False
    try:
        t5 = render([("system", s1), ("user", u1)])
        if t5.startswith(preamble) and s1 in t5:
            block = t5[len(preamble): t5.index(u1) - len(user_prefix)]
            if s1 in block:
                system_prefix, system_suffix = block.split(s1, 1)
                has_system = True
    except Exception:  # templates that reject a system message simply get none
        pass
    return ChatParts(preamble, system_prefix, system_suffix, user_prefix, user_suffix,
                     assistant_prefix, assistant_suffix, t4[len(t1):], has_system)


def _literal(text: str) -> str:
    """Text for a Go template: `{{` would open an action, so it is written as one."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(parts: ChatParts, *, bos_token: str | None = None,
                adds_bos: bool = False) -> str:
    """The Ollama (Go text/template) TEMPLATE for these parts."""
    preamble = parts.preamble
    if adds_bos and bos_token and preamble.startswith(bos_token):
        preamble = preamble[len(bos_token):]  # the runtime puts BOS in front itself
    branches = []
    if parts.has_system:
        branches.append(("system", parts.system_prefix, parts.system_suffix))
    branches += [("user", parts.user_prefix, parts.user_suffix),
                 ("assistant", parts.assistant_prefix, parts.assistant_suffix)]
    body = ""
    for index, (role, prefix, suffix) in enumerate(branches):
        keyword = "if" if index == 0 else "else if"
        body += (f'{{{{ {keyword} eq .Role "{role}" }}}}{_literal(prefix)}{{{{ .Content }}}}'
                 f"{_literal(suffix)}")
    return (f"{_literal(preamble)}{{{{ range .Messages }}}}{body}{{{{ end }}}}{{{{ end }}}}"
            f"{_literal(parts.generation_prompt)}")


def stop_tokens(tokenizer: Any, generation_config: dict[str, Any],
                parts: ChatParts | None) -> list[str]:
    """The model's EOS token(s) and the text that closes an assistant turn."""
    ids = generation_config.get("eos_token_id", tokenizer.eos_token_id)
    stops: list[str] = []
    for token_id in ids if isinstance(ids, list) else [ids]:
        if isinstance(token_id, int):
            token = tokenizer.convert_ids_to_tokens(token_id)
            if token and token not in stops:
                stops.append(token)
    if parts is not None and parts.assistant_suffix.strip() and \
            parts.assistant_suffix.strip() not in stops:
        stops.append(parts.assistant_suffix.strip())
    return stops


def modelfile(tokenizer: Any, generation_config: dict[str, Any], source: str, *,
              adds_bos: bool | None = None) -> str:
    """An Ollama Modelfile for the exported GGUF file (or directory) at `source`.

    `adds_bos`: whether the runtime adds BOS in front of the prompt (the GGUF's
    `tokenizer.ggml.add_bos_token`); by default what the HF tokenizer does.
    """
    if adds_bos is None:
        ids = tokenizer("1").input_ids
        adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    lines = ["# Ollama Modelfile written by graftline. Build: ollama create NAME -f Modelfile",
             f"FROM {source}"]
    parts = chat_parts(tokenizer)
    template = None if parts is None else go_template(
        parts, bos_token=tokenizer.bos_token, adds_bos=adds_bos)
    if template is None or '"""' in template:
        lines.append("# The chat template could not be translated; Ollama will use its default.")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(stop)}"
              for stop in stop_tokens(tokenizer, generation_config, parts)]
    return "\n".join(lines) + "\n"
