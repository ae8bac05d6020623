"""The exported model's README.md: its lineage, each stage's metrics, how it was checked."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graftline import __version__
from graftline.engine.export.chain import LineageNode


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _lora(node: LineageNode) -> str:
    if not node.lora:
        return ""
    r = node.lora.get("r")
    alpha = node.lora.get("alpha", node.lora.get("lora_alpha"))
    extra = ", rsLoRA" if node.lora.get("use_rslora") else ""
    return f"r={r}, α={alpha}{extra}"


def _label(node: LineageNode) -> str:
    return node.stage or node.name or Path(node.path).name


def render(*, name: str, checkpoint: Path, lineage: Sequence[LineageNode], dtype: str,
           verification: dict[str, Any] | None, untied: bool, files: Sequence[str]) -> str:
    root = lineage[0] if lineage else None
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {root.path if root else 'unknown'}",
        "tags: [graftline, lora, merged]",
        "---",
        "",
        f"# {name}",
        "",
        f"Exported by graftline {__version__} on "
        f"{datetime.now(UTC).isoformat(timespec='seconds')} from `{checkpoint}`: the LoRA "
        f"adapter chain merged into its full-precision base, stored as {dtype}.",
        "",
    ]
    if untied:
        lines += ["The base ties its input and output embeddings, but the adapter changed only one "
                  "of them, so this export stores both and sets `tie_word_embeddings` to false.",
                  ""]
    lines += ["## Lineage", "", "Root first; each row was made from the row above it.", "",
              "| # | checkpoint | kind | stage | used as | LoRA |", "|---|---|---|---|---|---|"]
    for i, node in enumerate(lineage):
        missing = " (missing)" if not node.exists else ""
        kind = node.stage_kind or node.kind
        lines.append(f"| {i} | `{node.path}`{missing} | {node.kind} | {_label(node)} ({kind}) | "
                     f"{node.relation or ''} | {_lora(node)} |")
    measured = [node for node in lineage if node.metrics or node.evaluation]
    if measured:
        lines += ["", "## Metrics per stage", ""]
        for node in measured:
            lines += [f"### {_label(node)} ({node.stage_kind or node.kind})", ""]
            for title, values in (("training", node.metrics), ("evaluation", node.evaluation)):
                if values:
                    shown = ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(values.items()))
                    lines.append(f"- {title}: {shown}")
            lines.append("")
    if verification:
        lines += ["", "## Verification", "",
                  f"- {verification['message']}",
                  f"- top-1 agreement with base + adapter on the probe prompts: "
                  f"{verification['top1_agreement']:.1%}",
                  f"- greedy generation identical: {verification['generation_matches']}",
                  "- details: `verification.json`", ""]
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in files]
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "",
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
              "```", ""]
    return "\n".join(lines)
