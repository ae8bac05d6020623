"""Proof that an export is the model that was trained: reload it, compare logits, generate.

The reference is the base in full precision with the adapter applied by PEFT (unmerged), exactly
as it was evaluated in training. Models are loaded one after the other, so verification peaks at
one model in memory. The tolerance is relative to the logits' scale and depends on the export
dtype: fp32 must agree to rounding, bf16/fp16 to their precision. How far a half-precision
export may drift depends on the model (a sharper one has larger logits and larger rounding
errors), so the reference is also run in the export's dtype, unmerged, and the export may differ
by up to twice what that rounding alone does (`baseline_diff`), whichever bound is larger.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.heap import freeze_imported_heap

PROBES: tuple[str, ...] = ("12+34", "Hello! Who are you?", "Write one sentence about the sea.")
# Allowed max |logit diff| per unit of logit scale (max(1, max |reference logit|)).
RELATIVE_TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
VERIFICATION = "verification.json"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Verification:
    passed: bool
    message: str
    dtype: str
    max_abs_diff: float
    tolerance: float
    logit_scale: float
    top1_agreement: float
    probes: list[str] = field(default_factory=list)
    reference_generation: list[str] = field(default_factory=list)
    export_generation: list[str] = field(default_factory=list)
    generation_matches: bool = False
    tokenizer_loaded: bool = False
    seconds: float = 0.0
    # max |logit diff| of the reference itself run in the export's dtype (None for float32)
    baseline_diff: float | None = None
    tokenizer_same: bool | None = None  # encodes the corpus and the chat like the base's
    tokenizer_message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_inputs(tokenizer: Any, probes: tuple[str, ...] = PROBES,
                 max_tokens: int = 48) -> list[torch.Tensor]:
    """Token ids per probe, in the chat format when the tokenizer has a chat template."""
    batches = []
    for text in probes:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     tokenize=False, add_generation_prompt=True)
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text)["input_ids"]
        batches.append(torch.tensor([ids[-max_tokens:]], dtype=torch.long))
    return batches


@torch.no_grad()
def _run(model: Any, tokenizer: Any, inputs: list[torch.Tensor],
         new_tokens: int) -> tuple[list[torch.Tensor], list[str]]:
    logits, texts = [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for ids in inputs:
        logits.append(model(input_ids=ids).logits.float())
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False))
    return logits, texts


def _release(*objects: Any) -> None:
    del objects
    gc.collect()


def reference_outputs(base: Path, adapter: Path | None, tokenizer: Any,
                      inputs: list[torch.Tensor], new_tokens: int, dtype: str = "float32"):
    """The reference's float32 logits and generations, and how far its own logits move when it
    runs in `dtype` (None for float32): the rounding a half-precision export cannot avoid."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    logits, texts = _run(model, tokenizer, inputs, new_tokens)
    baseline = None
    if dtype != "float32":
        model.to(_TORCH_DTYPES[dtype])
        with torch.no_grad():
            baseline = max(float((model(input_ids=ids).logits.float() - ref).abs().max())
                           for ids, ref in zip(inputs, logits, strict=True))
    _release(model)
    return logits, texts, baseline


# A fixed corpus the export's tokenizer must encode exactly like the base's: digits, spaces,
# punctuation, accents, CJK, emoji, code and the special tokens' neighbourhood.
TOKENIZER_CORPUS: tuple[str, ...] = (
    "12+34=46", "Hello! Who are you?", "  two  spaces and a tab\there\n\nnew lines",
    "naïve café, Ærøskøbing", "我想在apple工作1314151天", "🚀 emoji 😶\u200d🌫️ ✅",
    "def f(x):\n    return x**2  # code", "I've been 'told he's there, 'RE you sure?",
    "3 33 333 3333 33333 3.3 3..3", "------======= ......!!!!!!??????",
)
CHAT_SAMPLE = ({"role": "system", "content": "You add numbers."},
               {"role": "user", "content": "12+34"}, {"role": "assistant", "content": "46"},
               {"role": "user", "content": "Hello! Who are you?"})


def _encodings(tokenizer: Any) -> list[tuple[str, list[int]]]:
    rows = [(text, list(tokenizer(text)["input_ids"])) for text in TOKENIZER_CORPUS]
    if getattr(tokenizer, "chat_template", None):
        for messages, prompt in ((CHAT_SAMPLE, True), (CHAT_SAMPLE[1:3], False)):
            try:
                rendered = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                         add_generation_prompt=prompt)
            except Exception:  # a template that refuses a system turn, say
                rendered = tokenizer.apply_chat_template(list(messages[1:]), tokenize=False,
                                                         add_generation_prompt=prompt)
            rows.append((f"chat: {rendered!r}", list(
                tokenizer(rendered, add_special_tokens=False)["input_ids"])))
    return rows


def compare_tokenizers(export_dir: Path, reference: Path) -> tuple[bool, str]:
    """Whether the export's tokenizer encodes the corpus and a rendered chat like the one in
    `reference` (the base the lineage started from), loaded the same way (AutoTokenizer)."""
    from transformers import AutoTokenizer

    try:
        base = AutoTokenizer.from_pretrained(reference)
    except Exception as exc:
        return True, f"the base's tokenizer in {reference} does not load ({exc}); not compared"
    got = AutoTokenizer.from_pretrained(export_dir)
    if getattr(got, "chat_template", None) != getattr(base, "chat_template", None):
        return False, f"the export's chat template differs from the base's ({reference})"
    for (text, want), (_, have) in zip(_encodings(base), _encodings(got), strict=True):
        if want != have:
            return False, (f"the export's tokenizer encodes {text[:60]!r} as {have[:12]} where "
                           f"the base's ({reference}) gives {want[:12]}")
    return True, (f"the tokenizer encodes {len(TOKENIZER_CORPUS)} texts and the chat template "
                  "exactly like the base's")


def verify(export_dir: Path, base: Path, adapter: Path | None, dtype: str, *,
           probes: tuple[str, ...] = PROBES, new_tokens: int = 8,
           tokenizer_reference: Path | None = None) -> Verification:
    """Compare the exported model with base + adapter; never raises for a mismatch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    # its two models are released with a full collection each (`_release`): make those cheap
    freeze_imported_heap()
    tolerance_rel = RELATIVE_TOLERANCE[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(export_dir)
    except Exception as exc:
        return Verification(False, f"the exported tokenizer does not load: {exc}", dtype,
                            float("nan"), float("nan"), float("nan"), 0.0,
                            seconds=time.monotonic() - started)
    inputs = probe_inputs(tokenizer, probes)
    ref_logits, ref_text, baseline = reference_outputs(base, adapter, tokenizer, inputs,
                                                       new_tokens, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=_TORCH_DTYPES[dtype])
        model.eval()
        got_logits, got_text = _run(model, tokenizer, inputs, new_tokens)
        _release(model)
    except Exception as exc:
        return Verification(False, f"the exported model does not load or run: {exc}", dtype,
                            float("nan"), float("nan"), float("nan"), 0.0, list(probes),
                            ref_text, tokenizer_loaded=True, seconds=time.monotonic() - started)
    same, said = (None, "") if tokenizer_reference is None else compare_tokenizers(
        export_dir, tokenizer_reference)
    diff = max(float((g - r).abs().max()) for g, r in zip(got_logits, ref_logits, strict=True))
    scale = max(1.0, max(float(r.abs().max()) for r in ref_logits))
    agree = [(g.argmax(-1) == r.argmax(-1)).float().mean().item()
             for g, r in zip(got_logits, ref_logits, strict=True)]
    tolerance = max(tolerance_rel * scale, 2 * (baseline or 0.0))
    passed = diff <= tolerance
    rounding = "" if baseline is None else f"; the reference itself in {dtype}: {baseline:.3g}"
    message = (f"max |logit diff| {diff:.3g} ≤ {tolerance:.3g} ({dtype}{rounding})" if passed
               else f"max |logit diff| {diff:.3g} exceeds the {dtype} tolerance {tolerance:.3g}"
               f"{rounding}: the exported weights do not reproduce base + adapter")
    if same is False:
        passed, message = False, said if passed else f"{message}; {said}"
    return Verification(passed, message, dtype, diff, tolerance, scale, sum(agree) / len(agree),
                        list(probes), ref_text, got_text, ref_text == got_text, True,
                        time.monotonic() - started, baseline, same, said)
