"""Which model a hand-made adapter was trained on, decided from data (`--check-data FILE`).

PEFT records the in-memory model's `name_or_path`, which `merge_and_unload()` does not change:
an adapter trained on base + earlier adapters merged in memory (nothing saved) names the plain
base, and nothing in its files says otherwise. The lineage can only warn (`forensics`: several
hand-made adapters on one recorded base, written one after another). Data decides it: the
adapter was fitted to the model it was trained on, so it lowers the loss on its own data there
more than on the other candidate.

For each candidate model M (the recorded base alone; the base with the adapters written
before it merged in, in order) this measures the mean token loss on the answers of the rows,
with the adapter applied to M. The adapter was fitted to the model it was trained on, so its
loss is lower there: applied to the other candidate it moves weights that were never meant to
move that way. Within `MARGIN` of each other the answer is "unclear", never a guess. The losses
without the adapter are reported beside them, as context.

Why the losses with the adapter, not the gains (loss without − loss with): measured on the toy
per-topic tree (tests/test_lineage_unsaved_merge.py), a second topic's adapter trained on the
first topic's in-memory merge lowered the plain base's loss more than the merge's (the base
had more to learn: the chat format the first topic had already taught), so gains named the
wrong model while the losses with the adapter named the right one for both adapters.

`in_memory_merge` is the export's use of it: refuse what the lineage proves or the data
decides against, warn where only doubt is left.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common.checkpoint_files import ADAPTER_CONFIG
from graftline.engine.common.errors import GraftlineError
from graftline.engine.export.chain import ExportRefused

__all__ = ["MARGIN", "DataCheckError", "DataVerdict", "batches", "check_adapter", "decide",
           "in_memory_merge", "read_rows"]

MARGIN = 0.05  # the losses must differ by 5% of the lower one (and by 0.01 nats)
MAX_ROWS = 64  # enough rows to tell, few enough to run on a CPU in seconds


class DataCheckError(GraftlineError, ValueError):
    """The data or the adapters cannot be used for the check."""


@dataclass(frozen=True)
class DataVerdict:
    adapter: str
    base: str
    chain: tuple[str, ...]  # the adapters merged before it, in order
    rows: int
    base_without: float
    base_with: float
    chain_without: float
    chain_with: float
    verdict: Literal["base", "chain", "unclear"]

    def describe(self) -> str:
        name = Path(self.adapter).name
        chain = " + ".join(Path(a).name for a in self.chain)
        numbers = (f"on {self.rows} rows, with it the loss is {self.base_with:.4f} on the recorded "
                   f"base and {self.chain_with:.4f} on the base + {chain} (without it "
                   f"{self.base_without:.4f} and {self.chain_without:.4f})")
        if self.verdict == "chain":
            return (f"{name} was trained on the base + {chain} merged in memory: {numbers}. "
                    "Loaded on its recorded base alone it is the wrong model")
        if self.verdict == "base":
            return f"{name} was trained on its recorded base: {numbers}"
        return (f"the data cannot tell which model {name} was trained on: {numbers} (its "
                f"losses differ by less than {MARGIN:.0%})")

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "base": self.base, "chain": list(self.chain),
                "rows": self.rows, "base_without": self.base_without,
                "base_with": self.base_with, "chain_without": self.chain_without,
                "chain_with": self.chain_with, "verdict": self.verdict,
                "message": self.describe()}


def decide(base_with: float, chain_with: float) -> Literal["base", "chain", "unclear"]:
    """Pure: the model on which the adapter's loss is lower, by at least MARGIN of the lower
    one (and 0.01 nats); "unclear" within that."""
    gap = base_with - chain_with
    if abs(gap) < max(MARGIN * min(base_with, chain_with), 0.01):
        return "unclear"
    return "chain" if gap > 0 else "base"


# -- data --------------------------------------------------------------------------------------


def _split(row: dict[str, Any]) -> tuple[Any, Any] | None:
    """(prompt, answer) of a row in any of TRL's formats; the answer is what the loss counts
    (a preference row's chosen answer). None when the row has no answer."""
    if isinstance(row.get("messages"), list) and row["messages"]:
        messages = row["messages"]
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            return messages[:-1], [last]
        return None
    prompt = row.get("prompt")
    for key in ("completion", "chosen"):
        if row.get(key) is not None:
            return prompt or "", row[key]
    if isinstance(row.get("text"), str):
        return "", row["text"]
    return None


def read_rows(path: Path, limit: int = MAX_ROWS) -> list[tuple[Any, Any]]:
    """The first `limit` usable (prompt, answer) pairs of a JSON-lines file."""
    pairs: list[tuple[Any, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataCheckError(f"{path}: cannot be read ({exc})",
                             "pass a JSON-lines file of the adapter's training rows") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataCheckError(f"{path}:{number}: not JSON",
                                 "pass a JSON-lines file, one row per line") from None
        found = _split(row) if isinstance(row, dict) else None
        if found is not None:
            pairs.append(found)
        if len(pairs) >= limit:
            break
    if not pairs:
        raise DataCheckError(
            f"{path}: no row with an answer (messages ending with an assistant turn, "
            "prompt+completion, prompt+chosen, or text)",
            "pass rows the adapter was trained on (or like them), in one of TRL's formats")
    return pairs


def _texts(tokenizer: Any, prompt: Any, answer: Any) -> tuple[str, str]:
    """(prompt text, full text) as the trainer would have seen them."""
    if isinstance(prompt, list) or isinstance(answer, list):
        turns = (prompt if isinstance(prompt, list) else
                 [{"role": "user", "content": str(prompt)}] if prompt else [])
        reply = answer if isinstance(answer, list) else \
            [{"role": "assistant", "content": str(answer)}]
        if getattr(tokenizer, "chat_template", None):
            head = tokenizer.apply_chat_template(turns, tokenize=False,
                                                 add_generation_prompt=True) if turns else ""
            full = tokenizer.apply_chat_template(turns + reply, tokenize=False)
            return str(head), str(full)
        head = "".join(str(m.get("content", "")) for m in turns)
        return head, head + "".join(str(m.get("content", "")) for m in reply)
    return str(prompt), str(prompt) + str(answer)


# -- models ------------------------------------------------------------------------------------


def _loss(model: Any, batches: Sequence[dict[str, Any]]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            target = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                reduction="sum")
            total += float(losses)
            count += int((target != -100).sum())
    if count == 0:
        raise DataCheckError("no answer tokens to measure",
                             "pass rows whose answers are not empty")
    return total / count


def batches(tokenizer: Any, pairs: Sequence[tuple[Any, Any]], size: int = 16
            ) -> list[dict[str, Any]]:
    """Right-padded batches of `size` rows: input_ids, attention_mask, and labels that count
    only the answers' tokens (the loss a trainer with completion-only loss computes)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: list[tuple[list[int], int]] = []
    for prompt, answer in pairs:
        head, full = _texts(tokenizer, prompt, answer)
        ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"]) if head else 0
        if len(ids) > max(start, 1):
            rows.append((ids, start))
    out = []
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for j, (ids, start) in enumerate(chunk):
            input_ids[j, :len(ids)] = torch.tensor(ids)
            mask[j, :len(ids)] = 1
            labels[j, start:len(ids)] = torch.tensor(ids[start:])
        out.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return out


def check_adapter(adapter: Path, base: Path, chain: Sequence[Path], data: Path) -> DataVerdict:
    """Measure `adapter` on `data` applied to `base` and to `base` + `chain` (merged in order,
    as the user's `merge_and_unload()` did), and say which it was trained on."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not chain:
        raise DataCheckError(f"{adapter}: no adapter was written before it on its base",
                             "nothing to decide: it can only have been trained on its base")
    pairs = read_rows(data)
    tokenizer_dir = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    measured_on = batches(tokenizer, pairs)

    def load() -> Any:
        return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()

    def measured(model: Any) -> tuple[float, float]:
        without = _loss(model, measured_on)
        with_adapter = PeftModel.from_pretrained(model, str(adapter)).eval()
        return without, _loss(with_adapter, measured_on)

    base_without, base_with = measured(load())
    merged = load()
    for earlier in chain:
        merged = PeftModel.from_pretrained(merged, str(earlier)).merge_and_unload()
    chain_without, chain_with = measured(merged.eval())
    losses = (base_without, base_with, chain_without, chain_with)
    if not all(math.isfinite(x) for x in losses):
        raise DataCheckError(f"{adapter}: a loss is not finite ({losses})",
                             "check the adapter and the data")
    verdict = decide(base_with, chain_with)
    rows = sum(int(b["input_ids"].shape[0]) for b in measured_on)
    return DataVerdict(str(adapter), str(base), tuple(str(c) for c in chain), rows,
                       *losses, verdict)


# -- the export's question: an adapter on an in-memory merge? ---------------------------------


def in_memory_merge(checkpoint: Path, base: Path, check_data: Path | None) -> tuple[str, ...]:
    """An adapter trained on an in-memory merge records the plain base: merged into it, the
    export would verify (it equals base + adapter) and still be the wrong model. The lineage
    proves the pitfall from a saved merge's weights (refused, with the lineage's fix), or can
    only doubt it (several hand-made adapters on one base, one after another): then the
    export says so (the warnings returned), and with `check_data` the data decides
    (`check_adapter`): trained on the chain is refused, on the base goes ahead saying why."""
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        return () if check_data is None else (
            f"--check-data: {checkpoint} is not an adapter; nothing to decide",)
    from graftline.engine.lineage import scan

    lineage = scan([checkpoint.parent])
    node = lineage.get(os.path.realpath(checkpoint))
    found = node.in_memory_merge if node is not None else None
    if found is not None and found.certainty == "proven":
        raise ExportRefused(found.message, path=checkpoint, fix=found.fix)
    if found is None:
        return () if check_data is None else (
            "--check-data: no doubt about this adapter's base (no other hand-made adapter "
            "was written on it before); nothing to decide",)
    if check_data is None or not found.chain:
        return (f"{found.message} Fix: {found.fix}",)
    try:
        verdict = check_adapter(checkpoint, base, [Path(p) for p in found.chain], check_data)
    except DataCheckError as exc:
        raise ExportRefused(f"--check-data {check_data}: {exc.message}", fix=exc.fix) from None
    if verdict.verdict == "chain":
        raise ExportRefused(verdict.describe(), path=checkpoint, fix=(
            "export the chain: export each earlier adapter in turn, point this adapter's "
            "base_model_name_or_path at that export, then export it; or retrain it on a saved "
            "merge"))
    if verdict.verdict == "base":
        return (f"checked with {check_data}: {verdict.describe()}",)
    return (f"checked with {check_data}: {verdict.describe()}. Fix: {found.fix}",)
