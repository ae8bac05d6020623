"""Health checks before and after every stage: the failures users keep hitting, caught here.

Each check returns a `CheckResult` (pass / warn / fail) that goes into the checkpoint's manifest
and the event log. `CheckLog.record` raises `StageFailed` on a fail, with the stage, what was
seen, the likely cause and the fix, so a bad stage stops the run instead of feeding the next.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from graftline.engine.common.checkpoint_files import ADAPTER_CONFIG, REFERENCE_ADAPTER
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.sink import Sink
from graftline.engine.lineage.manifest import CheckResult, LoraSpec

ADAPTER = "default"
MERGE_TOLERANCE = 1e-4  # max |logit diff| per unit of logit scale, float32 merges
START_TOLERANCE = 0.05
FINGERPRINT_SAMPLES = 4096


class StageFailed(GraftlineError):
    def __init__(self, stage: str, seen: str, cause: str = "", fix: str = "",
                 check: str | None = None) -> None:
        self.stage, self.seen, self.cause, self.fix, self.check = stage, seen, cause, fix, check
        parts = [f"stage '{stage}' failed: {seen}"]
        if cause:
            parts.append(f"likely cause: {cause}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(f"stage '{stage}' failed: {seen}", fix, text=". ".join(parts))


def verdict(name: str, status: Literal["pass", "warn", "fail"], message: str, *,
            cause: str = "", fix: str = "",
            **data: Any) -> CheckResult:
    """A check's result, its cause and fix among the data the console and the manifest show."""
    if cause:
        data["cause"] = cause
    if fix:
        data["fix"] = fix
    return CheckResult(name=name, status=status, message=message, data=data)


class CheckLog:
    """The checks of one stage: emitted as they run, kept for the manifest, fatal on fail."""

    def __init__(self, stage: str, sink: Sink) -> None:
        self.stage, self.sink = stage, sink
        self.results: list[CheckResult] = []
        self.seconds = 0.0

    def record(self, result: CheckResult) -> CheckResult:
        result = result.model_copy(update={"stage": self.stage})
        self.results.append(result)
        self.sink.emit("check_result", self.stage, name=result.name, status=result.status,
                       message=result.message, data=result.data)
        if result.status == "warn":
            self.sink.emit("warning", self.stage, message=result.message,
                           fix=result.data.get("fix", ""))
        if result.status == "fail":
            raise StageFailed(self.stage, result.message, result.data.get("cause", ""),
                              result.data.get("fix", ""), check=result.name)
        return result


# ---------------------------------------------------------------- adapters and trainable weights

def _peft_config(model: Any) -> dict[str, Any]:
    return dict(getattr(model, "peft_config", None) or {})


# The adapter's own weights besides lora_A/B: full copies of modules (`modules_to_save`) and the
# rows of the tokens it trains (`lora.trainable_tokens`: `token_adapter.trainable_tokens_delta`).
ADAPTER_PARTS = ("lora_", "modules_to_save", "trainable_tokens_")


def _is_lora_param(name: str, adapter: str = ADAPTER) -> bool:
    return any(part in name for part in ADAPTER_PARTS) and f".{adapter}" in name


def adapters(model: Any, *, allowed_frozen: Sequence[str] = (REFERENCE_ADAPTER,)) -> CheckResult:
    """Exactly one trainable adapter, named `default`, and it is the active one."""
    names = list(_peft_config(model))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        return verdict("single_adapter", "fail", "the model has no LoRA adapter",
                       cause="the LoRA was never applied (a plain model reached the trainer)",
                       fix="give the trainer a peft_config for a new adapter, or a PeftModel "
                           "loaded with is_trainable=True to continue one",
                       adapters=names)
    extra = [n for n in names if n != ADAPTER and n not in allowed_frozen]
    if extra:
        return verdict("single_adapter", "fail",
                       f"stacked adapters: the model carries {names}, not one `default` adapter",
                       cause="an adapter was loaded with transformers' load_adapter (or a "
                             "PeftModel was wrapped again) and the trainer added a second LoRA",
                       fix="to continue an adapter load it with PeftModel.from_pretrained(model, "
                           "path, is_trainable=True, adapter_name='default') and pass no "
                           "peft_config; to change the rank, merge first",
                       adapters=names)
    if ADAPTER not in names:
        return verdict("single_adapter", "fail", f"no adapter named `default` (have {names})",
                       cause="the adapter was loaded under another name, which TRL does not train",
                       fix="load it with adapter_name='default'", adapters=names)
    active = getattr(model, "active_adapter", None)
    active = active if isinstance(active, str) else (list(active or []) or [None])[0]
    if active != ADAPTER:
        return verdict("single_adapter", "fail", f"the active adapter is '{active}', not `default`",
                       cause="set_adapter was called with another adapter",
                       fix="model.set_adapter('default') before training", adapters=names)
    in_default = [n for n in trainable if _is_lora_param(n)]
    if not in_default:
        return verdict("single_adapter", "fail",
                       "frozen adapter: no parameter of the `default` adapter requires grad",
                       cause="the adapter was loaded without is_trainable=True (training would "
                             "fail with 'element 0 of tensors does not require grad')",
                       fix="PeftModel.from_pretrained(model, path, is_trainable=True)",
                       adapters=names)
    frozen_ref = [n for n in trainable if f".{REFERENCE_ADAPTER}." in n]
    if frozen_ref:
        return verdict("single_adapter", "fail",
                       "the reference adapter `ref` is trainable: the reference would drift",
                       cause="set_adapter(['default', 'ref']) or a manual requires_grad",
                       fix="leave `ref` frozen; only `default` trains", adapters=names)
    return verdict("single_adapter", "pass", "one trainable adapter, `default`, active",
                   adapters=names)


def trainable_fraction(model: Any) -> CheckResult:
    """Only LoRA weights train; a LoRA that was never applied trains 100%."""
    total = trainable = stray = 0
    stray_names: list[str] = []
    for name, param in model.named_parameters():
        count = param.numel()
        total += count
        if param.requires_grad:
            trainable += count
            if not _is_lora_param(name):
                stray += count
                if len(stray_names) < 5:
                    stray_names.append(name)
    fraction = trainable / total if total else 0.0
    data: dict[str, Any] = {"trainable": trainable, "total": total,
                            "fraction": round(fraction, 6)}
    if trainable and stray == trainable:
        return verdict("trainable_fraction", "fail",
                       f"LoRA never applied: {fraction:.0%} of the parameters are trainable and "
                       "none of them is a LoRA weight",
                       cause="the model reached the trainer without its adapter (no peft_config, "
                             "or get_peft_model was skipped)",
                       fix="pass a LoraConfig as peft_config (new adapter) or load the adapter "
                           "with is_trainable=True (continue)", **data)
    if stray:
        return verdict("trainable_fraction", "fail",
                       f"{stray} base-model parameters are trainable besides the LoRA "
                       f"(e.g. {', '.join(stray_names)})",
                       cause="requires_grad was set on base weights, so the base would change",
                       fix="freeze the base (peft does this) or list the modules in "
                           "modules_to_save on purpose", **data)
    if fraction > 0.5:
        return verdict("trainable_fraction", "warn",
                       f"{fraction:.1%} of the parameters train: large for a LoRA",
                       fix="a smaller rank is usually enough", **data)
    return verdict("trainable_fraction", "pass", f"{fraction:.2%} trainable, all LoRA", **data)


def lora_config_kept(expected: LoraSpec, model: Any) -> CheckResult:
    """A continued adapter keeps the shape it was trained with."""
    config = _peft_config(model).get(ADAPTER)
    if config is None:
        return verdict("lora_config_kept", "fail", "no `default` adapter to compare")
    got: dict[str, Any] = {"r": config.r, "alpha": config.lora_alpha}
    want: dict[str, Any] = {"r": expected.r, "alpha": expected.alpha}
    if expected.trainable_tokens is not None:  # recorded: the trained token rows go on too
        got["trainable_tokens"] = token_ids_of(config)
        want["trainable_tokens"] = sorted(expected.trainable_tokens)
    tokens = f", trainable tokens {got['trainable_tokens']}" \
        if got.get("trainable_tokens") else ""
    if got != want:
        return verdict("lora_config_kept", "fail",
                       f"the continued adapter has r={got['r']} α={got['alpha']}"
                       f"{tokens}, its parent was saved with r={want['r']} α={want['alpha']}"
                       + (f", trainable tokens {want['trainable_tokens']}"
                          if want.get("trainable_tokens") else ""),
                       cause="a different LoRA config replaced the continued one",
                       fix="continue with the parent's config, or merge and start a new adapter",
                       got=got, expected=want)
    return verdict("lora_config_kept", "pass",
                   f"r={got['r']} α={got['alpha']}{tokens} as the parent")


def token_ids_of(config: Any) -> list[int]:
    """The token ids whose rows a PEFT LoraConfig trains (`trainable_token_indices`, a list or
    one list per module: the same rows on the embedding and an untied lm_head)."""
    found = getattr(config, "trainable_token_indices", None) or []
    if isinstance(found, dict):
        return sorted({int(i) for ids in found.values() for i in ids})
    return sorted({int(i) for i in found})


# ---------------------------------------------------------------- base weights

def _base_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


@torch.no_grad()
def fingerprint(model: Any) -> dict[str, tuple[float, float]]:
    """(sum, weighted sum) over a strided sample of every base tensor: cheap for any size, and a
    change to any sampled element changes it."""
    prints: dict[str, tuple[float, float]] = {}
    for name, param in model.named_parameters():
        if any(part in name for part in ADAPTER_PARTS) or f".{REFERENCE_ADAPTER}." in name:
            continue
        flat = param.detach().reshape(-1)
        if flat.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            flat = flat.to(torch.float32) if flat.is_floating_point() else flat.float()
        stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::stride].to(torch.float64)
        weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device)
        prints[_base_name(name)] = (float(sample.sum()), float((sample * weights).sum()))
    return prints


def base_unchanged(before: dict[str, tuple[float, float]],
                   after: dict[str, tuple[float, float]]) -> CheckResult:
    changed = [n for n in before if n in after and not _close(before[n], after[n])]
    if changed:
        return verdict("base_unchanged", "fail",
                       f"{len(changed)} base tensors changed during the stage "
                       f"(e.g. {', '.join(changed[:3])})",
                       cause="base weights were trainable or were written in place (a merge into "
                             "the live model, or requires_grad on base layers)",
                       fix="train only the adapter; merge in a merge stage, which saves a new "
                           "model", changed=changed[:20])
    return verdict("base_unchanged", "pass", f"{len(before)} base tensors unchanged",
                   tensors=len(before))


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- losses and references

def loss_continuity(previous_stage: str, previous_last: float | None,
                    first: float | None, *, ratio: float = 1.5) -> CheckResult:
    if previous_last is None or first is None:
        return verdict("loss_continuity", "pass", "no losses to compare")
    data: dict[str, Any] = {"previous_last": previous_last, "first": first}
    if first > previous_last * ratio + 0.05:
        return verdict("loss_continuity", "warn",
                       f"first loss {first:.4f} vs {previous_last:.4f} at the end of "
                       f"'{previous_stage}': the model did not pick up where it left off",
                       fix="check that the stage continues the right adapter/merged model and "
                           "that the data format matches", **data)
    return verdict("loss_continuity", "pass",
                   f"first loss {first:.4f} continues '{previous_stage}' ({previous_last:.4f})",
                   **data)


def reference_start(kind: str, first_logs: dict[str, float], reference: str | None
                    ) -> CheckResult:
    """DPO/GRPO start at zero margin / zero KL when the reference is the policy at the start."""
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins") if kind == "dpo" \
        else ("kl",)
    seen: dict[str, Any] = {k: float(first_logs[k]) for k in keys if k in first_logs}
    if not seen:
        return verdict("reference_start", "pass",
                       "no reference term logged (GRPO with beta = 0 has none)")
    worst = max(abs(v) for v in seen.values())
    what = "margin" if kind == "dpo" else "KL"
    if worst > START_TOLERANCE:
        return verdict("reference_start", "fail",
                       f"{kind.upper()} starts at a nonzero {what} ("
                       + ", ".join(f"{k}={v:.4f}" for k, v in seen.items())
                       + f"); the planned reference was {reference or 'the policy at the start'}",
                       cause="the reference is not the policy as it was when the stage started "
                             "(e.g. the adapter disabled = the base model, instead of a frozen "
                             "copy of the adapter)",
                       fix="continue the adapter as a PeftModel named `default` with ref_model="
                           "None, so TRL makes the frozen `ref` copy", **seen)
    return verdict("reference_start", "pass", f"starts at {what} ≈ 0 ({worst:.2e})", **seen)


# ---------------------------------------------------------------- generation sanity

@dataclass(frozen=True)
class Generation:
    text: str
    tokens: tuple[int, ...]
    ended: bool  # an end token came before max_new_tokens


def probe_texts(tokenizer: Any, probes: Sequence[str]) -> list[str]:
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in probes]
    return list(probes)


def _end_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(ids) if isinstance(ids, list | tuple) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate(model: Any, tokenizer: Any, probes: Sequence[str], max_new_tokens: int = 12
             ) -> list[Generation]:
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(probe_texts(tokenizer, probes), return_tensors="pt", padding=True,
                        add_special_tokens=not getattr(tokenizer, "chat_template", None))
        enc = {k: v.to(model.device) for k, v in enc.items()}
        ends = _end_ids(model, tokenizer)
        # TRL turns router logits on for MoE models (for its aux loss); with padding and a cache
        # transformers' load-balancing loss then fails inside generate. Probes need no aux loss.
        configs = [c for c in (getattr(model, "config", None),
                               getattr(getattr(model, "base_model", None), "config", None))
                   if c is not None and getattr(c, "output_router_logits", False)]
        for config in configs:
            config.output_router_logits = False
        try:
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=ends or None)
        finally:
            for config in configs:
                config.output_router_logits = True
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    results = []
    for row in new:
        tokens = []
        ended = False
        for t in row:
            if t in ends:
                ended = True
                break
            if t == tokenizer.pad_token_id:
                continue
            tokens.append(t)
        results.append(Generation(tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                  tuple(tokens), ended))
    return results


def degenerate(gen: Generation, max_new_tokens: int) -> str | None:
    """Why an output looks collapsed: empty (all end tokens), or one short pattern repeating."""
    if not gen.text:
        return "empty"
    tokens = gen.tokens
    if not gen.ended and len(tokens) >= min(max_new_tokens, 6):
        tail = tokens[-6:]
        for period in (1, 2):
            if all(tail[i] == tail[i % period] for i in range(len(tail))):
                return "repeating"
    return None


# A collapse needs most probes degenerate AND at least this share of them newly so (and never
# fewer than COLLAPSE_MIN_NEW): one probe flipping on a small model is noise, not a collapse.
COLLAPSE_NEW_SHARE = 0.25
COLLAPSE_MIN_NEW = 2
# What a stage's collapse check judges on: at least this many probes (the pipeline's, topped up
# with prompts from the stage's own data).
MIN_PROBES = 8


def generation_sanity(before: list[Generation], after: list[Generation], probes: Sequence[str],
                      max_new_tokens: int = 12, *, gate: bool = True) -> CheckResult:
    """Collapse = most probes degenerate now, and a margin of them newly so (see
    COLLAPSE_NEW_SHARE): a fail. Fewer newly degenerate probes are a warning band. With `gate`
    False (a rehearsal's few steps, often on a random-weight twin) a collapse is reported as a
    warning: quality is noise there."""
    bad_after = [degenerate(g, max_new_tokens) for g in after]
    bad_before = [degenerate(g, max_new_tokens) for g in before]
    samples = {p: g.text for p, g in zip(probes, after, strict=False)}
    total = len(after)
    n_after = sum(b is not None for b in bad_after)
    n_before = sum(b is not None for b in bad_before)
    newly = sum(1 for i, b in enumerate(bad_after)
                if b is not None and (i >= len(bad_before) or bad_before[i] is None))
    margin = max(COLLAPSE_MIN_NEW, math.ceil(COLLAPSE_NEW_SHARE * total))
    kinds = "/".join(sorted({b for b in bad_after if b}))
    data: dict[str, Any] = {"samples": samples, "degenerate_before": n_before,
                            "degenerate_after": n_after,
                            "newly_degenerate": newly, "margin": margin, "probes": total}
    if n_after * 2 > total and newly >= margin:
        message = (f"collapse: {n_after} of {total} probe prompts give {kinds} output (was "
                   f"{n_before} at the start of the stage; {newly} newly, a collapse needs "
                   f"{margin})")
        cause = ("the stage drove the model to a degenerate output (too high a learning rate, a "
                 "reward that pays for empty/short answers, or bad data with empty completions)")
        fix = ("lower the learning rate or the steps, check the data and rewards, and rerun "
               "the stage")
        if not gate:
            return verdict("generation_sanity", "warn",
                           f"{message} — reported, not gated (a rehearsal's few steps a stage)",
                           cause=cause, **data)
        return verdict("generation_sanity", "fail", message, cause=cause, fix=fix, **data)
    if n_after * 2 > total and newly:
        return verdict("generation_sanity", "warn",
                       f"{n_after} of {total} probes give {kinds} output ({n_before} at the "
                       f"start; {newly} newly, below the collapse margin of {margin})",
                       fix="watch the next stages' samples; a collapse fails the stage", **data)
    if n_after * 2 > total:
        return verdict("generation_sanity", "warn",
                       f"{n_after} of {total} probes give degenerate output, as they did "
                       "before the stage", **data)
    return verdict("generation_sanity", "pass", f"{total - n_after}/{total} probes answer",
                   **data)


# ---------------------------------------------------------------- the end of the turn

# Below this mean probability of the end-of-turn token right after a right answer, the model
# gives the answer and goes on (a healthy chat model puts most of its mass there).
END_OF_TURN_LOW = 0.5
END_OF_TURN_ROWS = 8  # rows of the stage's data measured (one forward pass)


def end_of_turn(before: float | None, after: float | None, token: str, *, trained: bool,
                judge: bool = True, rows: int = 0) -> CheckResult:
    """P(end-of-turn | prompt + expected answer), teacher-forced, at the stage's start and end.
    Low after the stage is a warning, never a failure (the stage's adapter is sound; the model
    does not stop); in a rehearsal (`judge` False: a few steps, often on random weights) it is only
    reported."""
    if after is None:
        return verdict("end_of_turn", "pass", "not measured: no chat rows with an expected "
                       "answer in the stage's data", rows=0)
    data: dict[str, Any] = {"before": before, "after": after, "token": token, "rows": rows,
                            "threshold": END_OF_TURN_LOW, "trained": trained}
    was = f"{before:.2f} at the start" if before is not None else "not measured at the start"
    said = f"P({token} | prompt + expected answer) {after:.2f} after the stage ({was})"
    if not judge:
        return verdict("end_of_turn", "pass", f"{said} — reported, not judged (a rehearsal's few "
                       "steps a stage)", **data)
    if after >= END_OF_TURN_LOW:
        return verdict("end_of_turn", "pass", said, **data)
    how = "it was already low at the start" if before is None or before < END_OF_TURN_LOW \
        else f"it dropped from {before:.2f} during the stage"
    if trained:
        fix = (f"the stage trains {token}'s rows but not enough yet: more steps or a higher "
               "learning rate, then check again")
    else:
        fix = (f"train {token}'s embedding and lm_head rows: lora = {{ ..., trainable_tokens = "
               f'["{token}"] }} (or "template") in the stage that starts the adapter, or start '
               "from an instruct model whose template tokens are trained")
    return verdict("end_of_turn", "warn",
                   f"the model does not end its turn after right answers: P({token} | prompt + "
                   f"expected answer) is {after:.2f} after the stage ({how}; a chat model "
                   f"needs ≥ {END_OF_TURN_LOW})",
                   cause="the base never learned the chat template's end-of-turn token, whose "
                         "rows a LoRA on the linear layers cannot train" if not trained else "",
                   fix=fix, **data)


# ---------------------------------------------------------------- merges and saved adapters

@torch.no_grad()
def merge_equal(merged: Any, expected_logits: torch.Tensor, input_ids: torch.Tensor,
                *, tolerance: float = MERGE_TOLERANCE, name: str = "merge_equal") -> CheckResult:
    """After a merge: no leftover peft_config, and the merged model's logits equal the adapter
    model's (computed before merging, in fp32) within `tolerance` per unit of logit scale
    (max(1, max |adapter logit|)), the rule the export's verification uses: float32 rounding
    grows with the logits, and a position whose hidden state has a small norm amplifies it
    (2.4e-4 on logits of 11.6 for a correct float32 merge of one toy base)."""
    if hasattr(merged, "peft_config"):
        return verdict(name, "fail", "the merged model still has a peft_config",
                       cause="the adapter was not merged and unloaded (merge_and_unload)",
                       fix="call merge_and_unload() and save the returned model")
    expected = expected_logits.float().cpu()
    got = merged(input_ids=input_ids.to(merged.device)).logits.float().cpu()
    diff = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    allowed = tolerance * scale
    if not diff <= allowed:
        return verdict(name, "fail",
                       f"merged logits differ from the adapter's by {diff:.2e} (> {allowed:.1e}:"
                       f" {tolerance} per unit of logit scale {scale:.3g})",
                       cause="the merge was done in a lossy dtype or into a quantized base",
                       fix="merge in float32 into the full-precision base", max_abs_diff=diff,
                       tolerance=allowed)
    return verdict(name, "pass", f"merged logits = adapter logits (max |Δ| {diff:.1e}, "
                   f"≤ {allowed:.1e})", max_abs_diff=diff, tolerance=allowed)


@torch.no_grad()
def logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=input_ids.to(model.device)).logits.float().cpu()


def probe_ids(tokenizer: Any, probes: Sequence[str]) -> torch.Tensor:
    """One padded-free batch of probe prompts for logit comparisons (same length: truncate)."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in probe_texts(tokenizer, probes)]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows])


def no_stray_ref(adapter_dir: Path) -> CheckResult:
    stray = Path(adapter_dir) / REFERENCE_ADAPTER
    if stray.exists():
        return verdict("no_stray_ref", "fail", f"the saved adapter has a stray '{stray.name}/' "
                       "directory (TRL's reference copy)",
                       cause="save_model() after DPO/GRPO saves every adapter",
                       fix="delete the `ref` adapter and save selected_adapters=['default']")
    return verdict("no_stray_ref", "pass", "only the `default` adapter was saved")


def adapter_base(adapter_dir: Path, expected: str | Path) -> CheckResult:
    """The saved adapter names the model it was trained on (after a merge: the merged model)."""
    config_path = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_path.is_file():
        return verdict("adapter_base", "fail", f"no {ADAPTER_CONFIG} was saved",
                       fix="save the adapter with save_pretrained")
    named = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not _same_model(named, expected):
        return verdict("adapter_base", "fail",
                       f"the adapter records base '{named}', but it was trained on '{expected}'",
                       cause="the adapter was trained on a model merged in memory, which keeps "
                             "the old base's name_or_path",
                       fix="save the merged model and load it from disk before adding the next "
                           "adapter (a merge stage does this)", named=named, expected=str(expected))
    return verdict("adapter_base", "pass", f"adapter records its base {expected}")


def _same_model(named: str | None, expected: str | Path) -> bool:
    if named is None:
        return False
    if named == str(expected):
        return True
    try:
        return Path(named).resolve() == Path(expected).resolve()
    except OSError:
        return False
