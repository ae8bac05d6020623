"""A GGUF export run in llama.cpp itself, compared with the HF export it was converted from.

The tensor check (`gguf_verify`) proves the file holds the right numbers; this proves llama.cpp
reads them as the model: a wrong tokenizer, special token, chat template or architecture
detail (what users of GGUF files report as garbled output) shows here and nowhere else.
llama.cpp runs in a child process (`gguf_llama`, llama-cpp-python); compared, each a structured
`Difference` when it fails:

- logits: llama.cpp's on the verification probes' token ids (the chat-format ids
  `verify.probe_inputs` gives, tokenized by the HF tokenizer, so this compares the network
  alone) against the HF export's in float32, every position, within `bound` (below);
- tokenization: llama.cpp's ids for the probes (with the model's special tokens, as
  `tokenizer(text)`) and for rendered chats (without, as a chat template's text is tokenized)
  equal to the HF tokenizer's;
- special tokens: BOS and EOS ids equal; every end-of-turn id of `generation_config.json` an
  end-of-generation token in llama.cpp (else a llama.cpp chat never stops);
- the GGUF's embedded chat template, as llama.cpp reads it, equal to the tokenizer's.

The logit bound, per GGUF type, is derived on the model at hand like the safetensors
verification's `baseline_diff`: the HF export is run in float32 a second time with every matrix
and every matmul input rounded as llama.cpp rounds them for that type (F16/BF16: both in that
format; Q8_0: blocks of 32 scaled by max|block|/127 and rounded, the scale stored in float16;
matrices whose rows do not split into blocks in F16, as the converter falls back) and GELU's
input and result in float16 (ggml computes GELU through a float16 table; for every type, F32
included), and llama.cpp may differ by up to twice that reference drift, or by `RELATIVE_FLOOR`
of the logit scale (max(1, max |logit|)), whichever is larger: the floor is the float32
safetensors tolerance, and all an F32 file without GELU gets (its drift is zero). The reference
runs transformers' eager attention: SDPA, the default, silently drops Gemma 2's attention
soft-capping, which llama.cpp applies. For the types llama.cpp's quantizer writes (K-quants,
Q4/Q5) the drift is measured with the file's own matrices (dequantized, put back into the HF
export) and each matmul input rounded to that weight type's dot-product format (Q8_K, Q8_0,
Q8_1, F16: ggml's `vec_dot_type`); where the file's rounded matrices cannot be put back one to
one (stacked or split experts) the logits are reported, not gated, and the message says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from graftline.engine.export.gguf_verify import GgufVerification

RUNTIME_PACKAGE = "llama-cpp-python"
RUNTIME_VERSION = "0.3.36"
NOT_INSTALLED = "llama.cpp runtime not installed (pip install 'graftline[gguf]')"
RELATIVE_FLOOR = 1e-4
DRIFT_FACTOR = 2.0
BOUNDED_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32
QK_K = 256
CHILD_TIMEOUT_S = 3600.0
IMPORT_FAILED = 3  # gguf_llama's exit status when llama_cpp is there but does not import


@dataclass(frozen=True)
class Difference:
    """One thing llama.cpp does differently from the HF export."""

    what: Literal["load", "logits", "vocabulary", "tokenization", "bos_token_id",
                  "eos_token_id", "end_of_turn", "chat_template"]
    detail: str
    expected: Any = None
    got: Any = None


@dataclass(frozen=True)
class RuntimeCheck:
    status: Literal["passed", "failed", "not_run"]
    message: str
    gguf_type: str
    runtime: str | None = None
    max_abs_diff: float | None = None
    bound: float | None = None
    bound_rule: str = ""
    logit_scale: float | None = None
    reference_drift: float | None = None
    top1_agreement: float | None = None
    tokenization: tuple[dict[str, Any], ...] = ()
    special_tokens: dict[str, Any] = field(default_factory=dict)
    chat_template_equal: bool | None = None
    differences: tuple[Difference, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokenization"] = list(self.tokenization)
        data["differences"] = [asdict(d) for d in self.differences]
        return data


def runtime_missing() -> str | None:
    """Why llama.cpp cannot run here (None when it can). A look-up, nothing imported."""
    try:
        found = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        found = None
    return NOT_INSTALLED if found is None else None


def bound_rule(gguf_type: str, from_file: bool = True) -> str:
    """The logit bound in words. For llama-quantize's types the bound is derived from the
    file's own matrices (`from_file`); where they cannot be put back into the HF model one to
    one (experts stacked or split), the logits are not gated."""
    if gguf_type not in BOUNDED_TYPES and not from_file:
        return (f"{gguf_type}: logits not gated (the file's rounded matrices include experts "
                "that cannot be put back into the HF model one to one, so no bound is "
                "derived): max |logit diff| and top-1 agreement are reported; tokenization, "
                "special tokens, end-of-turn and chat template are checked")
    if gguf_type not in BOUNDED_TYPES:
        return (f"max |logit diff| <= max({RELATIVE_FLOOR:g} * max(1, max|logit|), "
                f"{DRIFT_FACTOR:g} * the HF export's own drift with the file's own dequantized "
                "matrices and each matmul input rounded as llama.cpp's dot product for that "
                "matrix's type rounds it (Q8_0, Q8_1, Q8_K, F16))")
    if gguf_type == "f32":
        return (f"max |logit diff| <= max({RELATIVE_FLOOR:g} * max(1, max|logit|), "
                f"{DRIFT_FACTOR:g} * the HF export's own drift with GELU in float16, as ggml "
                "computes it; 0 without GELU)")
    return (f"max |logit diff| <= max({RELATIVE_FLOOR:g} * max(1, max|logit|), "
            f"{DRIFT_FACTOR:g} * the HF export's own drift with its matrices and matmul inputs "
            f"rounded to {gguf_type})")


# ---------------------------------------------------------------- the reference (torch)

def _q8_0(x: Any) -> Any:
    """ggml's Q8_0 round trip along the last dimension (quantize_row_q8_0_ref)."""
    import torch

    blocks = x.float().reshape(*x.shape[:-1], -1, Q8_BLOCK)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    stored = scale.half().float()  # the block's scale is stored in float16
    return (torch.round(blocks * inverse) * stored).reshape(x.shape).to(x.dtype)


def _q8_k(x: Any) -> Any:
    """ggml's Q8_K round trip along the last dimension (quantize_row_q8_K_ref: blocks of 256,
    values round(x * 127 / max|block|), the scale kept in float32): the input format of every
    K-quant dot product."""
    import torch

    blocks = x.float().reshape(*x.shape[:-1], -1, QK_K)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return (torch.round(blocks * inverse) * scale).reshape(x.shape).to(x.dtype)


# The format ggml's CPU dot product rounds a matmul's input to, per weight type
# (ggml-cpu.c type_traits_cpu[type].vec_dot_type); Q8_1 rounds values as Q8_0 does.
DOT_INPUT = {"F16": "f16", "BF16": "bf16", "Q4_0": "q8_0", "Q5_0": "q8_0", "Q8_0": "q8_0",
             "Q4_1": "q8_0", "Q5_1": "q8_0", "IQ4_NL": "q8_0", "Q2_K": "q8_k", "Q3_K": "q8_k",
             "Q4_K": "q8_k", "Q5_K": "q8_k", "Q6_K": "q8_k"}


def rounder(gguf_type: str, last_dim: int) -> Any:
    """How llama.cpp rounds a matrix (and that matmul's input) of this type, as a function."""
    import torch

    def through(dtype: torch.dtype) -> Any:
        return lambda x: x.to(dtype).to(x.dtype)

    if gguf_type == "f16" or (gguf_type == "q8_0" and last_dim % Q8_BLOCK):
        return through(torch.float16)
    if gguf_type == "bf16":
        return through(torch.bfloat16)
    if gguf_type == "q8_0":
        return _q8_0
    if gguf_type == "q8_k":
        return _q8_k
    return None


def reference_logits(model_dir: Path, inputs: list[Any], gguf_type: str,
                     matrices: Iterable[tuple[str, str, Any]] | None = None
                     ) -> tuple[list[Any], float | None]:
    """The HF export's float32 logits on `inputs`, and how far they move with its matrices and
    matmul inputs rounded for `gguf_type` and GELU in float16 (0.0 for f32 without GELU, None
    where no rounding is modelled). For llama-quantize's types the matrices are the file's own
    (`matrices`: (HF name, GGML type, dequantized values or None), `gguf_verify.file_matrices`),
    each matmul's input rounded as that type's dot product rounds it."""
    import torch
    from transformers import AutoModelForCausalLM

    # eager: transformers' reference attention. The default, SDPA, silently drops what it
    # cannot express: Gemma 2's attention logit soft-capping (`attn_logit_softcapping`, 50 in
    # the published configs), which llama.cpp, like eager, applies. Against SDPA a correct
    # Gemma 2 GGUF differs by ~5e-4 of the logit scale (measured on the twin).
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                      attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = [model(input_ids=ids).logits[0].float() for ids in inputs]
        drift: float | None = None
        if gguf_type in BOUNDED_TYPES:
            hooks = []
            half = rounder("f16", 0)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and gguf_type != "f32":
                    round_input = rounder(gguf_type, module.in_features)
                    hooks.append(module.register_forward_pre_hook(
                        lambda _m, args, r=round_input: (r(args[0]), *args[1:])))
                elif "GELU" in type(module).__name__:
                    # ggml computes GELU through a float16 table: input and result rounded
                    hooks.append(module.register_forward_pre_hook(
                        lambda _m, args: (half(args[0]), *args[1:])))
                    hooks.append(module.register_forward_hook(
                        lambda _m, _args, result: half(result)))
            if gguf_type != "f32":
                for parameter in model.parameters():
                    if parameter.ndim >= 2:
                        parameter.copy_(rounder(gguf_type, parameter.shape[-1])(parameter))
            drift = 0.0 if not hooks and gguf_type == "f32" else max(
                float((model(input_ids=ids).logits[0].float() - ref).abs().max())
                for ids, ref in zip(inputs, logits, strict=True))
            for hook in hooks:
                hook.remove()
        elif matrices is not None:
            drift = _file_drift(model, inputs, logits, matrices)
    del model
    return logits, drift


def _file_drift(model: Any, inputs: list[Any], logits: list[Any],
                matrices: Iterable[tuple[str, str, Any]]) -> float | None:
    """How far the logits move with the file's own matrices put in (one at a time) and every
    matmul input rounded for its weight's type (and GELU in float16); None when a matrix has
    no place in the model or its type's dot product is not modelled (the model is then left
    half changed: the caller discards it)."""
    import torch

    params = dict(model.named_parameters())
    kinds: dict[int, str] = {}  # id(parameter) -> GGML type
    for name, kind, values in matrices:
        parameter = params.get(name)
        if values is None or parameter is None or kind not in DOT_INPUT or tuple(
                values.shape[1:]) != tuple(parameter.shape[1:]) or (
                values.shape[0] > parameter.shape[0]):
            return None
        # a padding row the converter dropped keeps its value: llama.cpp has no such token
        parameter[: values.shape[0]] = torch.from_numpy(values).to(parameter.dtype)
        kinds[id(parameter)] = kind
    hooks = []
    half = rounder("f16", 0)
    for module in model.modules():
        weight_kind = kinds.get(id(getattr(module, "weight", None)))
        if isinstance(module, torch.nn.Linear) and weight_kind is not None:
            round_input = rounder(DOT_INPUT[weight_kind], module.in_features)
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, r=round_input: (r(args[0]), *args[1:])))
        elif "GELU" in type(module).__name__:
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args: (half(args[0]), *args[1:])))
            hooks.append(module.register_forward_hook(lambda _m, _args, result: half(result)))
    try:
        return max(float((model(input_ids=ids).logits[0].float() - ref).abs().max())
                   for ids, ref in zip(inputs, logits, strict=True))
    finally:
        for hook in hooks:
            hook.remove()


# ---------------------------------------------------------------- the run

def _texts(tokenizer: Any) -> list[dict[str, Any]]:
    from graftline.engine.export.verify import CHAT_SAMPLE, PROBES

    texts = [{"text": text, "add_special": True} for text in PROBES]
    if getattr(tokenizer, "chat_template", None):
        for messages, prompt in ((CHAT_SAMPLE, True), (CHAT_SAMPLE[1:3], False)):
            try:
                rendered = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                         add_generation_prompt=prompt)
            except Exception:  # a template that refuses a system turn
                rendered = tokenizer.apply_chat_template(list(messages[1:]), tokenize=False,
                                                         add_generation_prompt=prompt)
            texts.append({"text": rendered, "add_special": False, "chat": True})
    return texts


def _end_of_turn_ids(model_dir: Path, tokenizer: Any) -> list[int]:
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    ids = config.get("eos_token_id", tokenizer.eos_token_id)
    ids = ids if isinstance(ids, list) else [ids]
    return [int(i) for i in ids if isinstance(i, int)]


def _child(request: dict[str, Any], scratch: Path) -> tuple[dict[str, Any] | None, str]:
    path = scratch / "request.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    command = [sys.executable, "-m", "graftline.engine.export.gguf_llama", str(path)]
    # ggml answers an abort by attaching gdb for a backtrace: not in a verification
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        return None, f"llama.cpp did not finish in {CHILD_TIMEOUT_S:.0f} s"
    result = scratch / "result.json"
    if done.returncode == IMPORT_FAILED:
        return None, (f"not run: the llama.cpp runtime does not import "
                      f"({done.stderr.strip()[-300:]}); reinstall it: pip install "
                      "'graftline[gguf]'")
    if done.returncode != 0 or not result.is_file():
        tail = (done.stderr or done.stdout).strip()[-1500:]
        where = "load or run the file"
        marker = scratch / "tokenizing"
        if marker.is_file():
            text = request["texts"][int(marker.read_text(encoding="utf-8"))]["text"]
            where = f"tokenize {text!r}"
        return None, (f"llama.cpp could not {where} (exit status {done.returncode}): "
                      f"{tail or 'no message'}")
    return json.loads(result.read_text(encoding="utf-8")), ""


def run_gguf(path: Path, model_dir: Path, gguf_type: str) -> RuntimeCheck:
    """Run `path` in llama.cpp and compare it with the HF export in `model_dir` (the module
    says what and how). Never raises for a mismatch; a mismatch is a `failed` check."""
    started = time.monotonic()
    missing = runtime_missing()
    if missing is not None:
        return RuntimeCheck("not_run", f"not run: {missing}", gguf_type,
                            bound_rule=bound_rule(gguf_type))
    import numpy as np
    from transformers import AutoTokenizer

    from graftline.engine.export.verify import probe_inputs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = probe_inputs(tokenizer)
    texts = _texts(tokenizer)
    ends = _end_of_turn_ids(model_dir, tokenizer)
    with tempfile.TemporaryDirectory(prefix="graftline-llama-") as folder:
        scratch = Path(folder)
        request = {"model": str(Path(path).absolute()), "out": str(scratch),
                   "ids": [[int(t) for t in ids[0]] for ids in inputs], "texts": texts,
                   "eog_ids": ends}
        answer, failure = _child(request, scratch)
        got = [] if answer is None else [np.load(scratch / f"logits-{i}.npy")
                                         for i in range(len(inputs))]
    if answer is None and failure.startswith("not run:"):
        return RuntimeCheck("not_run", failure, gguf_type, bound_rule=bound_rule(gguf_type),
                            seconds=time.monotonic() - started)
    if answer is None:
        what: Literal["load", "tokenization"] = (
            "tokenization" if failure.startswith("llama.cpp could not tokenize") else "load")
        return RuntimeCheck("failed", failure, gguf_type, bound_rule=bound_rule(gguf_type),
                            differences=(Difference(what, failure),),
                            seconds=time.monotonic() - started)
    matrices = None
    if gguf_type not in BOUNDED_TYPES:  # llama-quantize's: the file's own matrices, if they fit
        from graftline.engine.export.gguf_verify import file_matrices

        matrices = file_matrices(Path(path), model_dir)
    want, drift = reference_logits(model_dir, inputs, gguf_type, matrices)
    rule = bound_rule(gguf_type, from_file=drift is not None)
    differences: list[Difference] = []
    diff, bound, scale, agree = _compare_logits(answer, got, want, drift, tokenizer, gguf_type,
                                                differences)
    rows = _compare_tokenization(answer, texts, tokenizer, differences)
    special = _compare_special(answer, ends, tokenizer, differences)
    same_template = _compare_template(answer, tokenizer, differences)

    tokenized = sum(1 for row in rows if row["equal"])
    if differences:
        status: Literal["passed", "failed"] = "failed"
        message = "llama.cpp differs: " + "; ".join(d.detail for d in differences[:3]) + (
            f" (+{len(differences) - 3} more)" if len(differences) > 3 else "")
    else:
        status = "passed"
        logits = (f"max |logit diff| {diff:.3g} ≤ {bound:.3g}, top-1 {agree:.1%}"
                  if bound is not None else
                  f"logits not gated for {gguf_type} (reported: max |logit diff| {diff:.3g}, "
                  f"top-1 {agree:.1%})")
        message = (f"llama.cpp runs it: {logits}; {tokenized}/{len(rows)} texts tokenized "
                   f"alike; special tokens and chat template equal")
    return RuntimeCheck(status, message, gguf_type, answer["runtime"], diff, bound,
                        rule, scale, drift, agree, tuple(rows), special,
                        same_template, tuple(differences), time.monotonic() - started)


def _compare_logits(answer: dict[str, Any], got: list[Any], want: list[Any],
                    drift: float | None, tokenizer: Any, gguf_type: str,
                    differences: list[Difference]
                    ) -> tuple[float, float | None, float, float]:
    """(max |diff|, bound, logit scale, top-1 agreement) over the first n_vocab columns (the
    converter may drop the embedding's padding rows)."""
    import numpy as np

    n_vocab = int(answer["n_vocab"])
    hf_vocab = int(want[0].shape[-1])
    if n_vocab > hf_vocab or n_vocab < len(tokenizer):
        differences.append(Difference(
            "vocabulary", f"llama.cpp has {n_vocab} tokens, the tokenizer {len(tokenizer)} "
                          f"and the model's output {hf_vocab}", len(tokenizer), n_vocab))
    width = min(n_vocab, hf_vocab)
    pairs = [(np.asarray(g, dtype=np.float64)[:, :width], w.double().numpy()[:, :width])
             for g, w in zip(got, want, strict=True)]
    diff = max(float(np.abs(g - w).max()) for g, w in pairs)
    scale = max(1.0, max(float(np.abs(w).max()) for _, w in pairs))
    agree = float(np.mean(np.concatenate([(g.argmax(-1) == w.argmax(-1)) for g, w in pairs])))
    bound = None if drift is None else max(RELATIVE_FLOOR * scale, DRIFT_FACTOR * drift)
    if bound is not None and not diff <= bound:
        worst = max(range(len(pairs)), key=lambda i: float(np.abs(pairs[i][0] -
                                                                  pairs[i][1]).max()))
        differences.append(Difference(
            "logits", f"max |logit diff| {diff:.3g} exceeds the {gguf_type} bound {bound:.3g} "
                      f"(worst on probe {worst}); the reference's own {gguf_type} drift is "
                      f"{drift:.3g}", bound, diff))
    return diff, bound, scale, agree


def _compare_tokenization(answer: dict[str, Any], texts: list[dict[str, Any]], tokenizer: Any,
                          differences: list[Difference]) -> list[dict[str, Any]]:
    rows = []
    for item, ids in zip(texts, answer["tokens"], strict=True):
        hf = list(tokenizer(item["text"], add_special_tokens=item["add_special"])["input_ids"])
        rows.append({"text": item["text"], "add_special": item["add_special"],
                     "equal": hf == ids, "hf": hf, "llama_cpp": ids})
        if hf != ids:
            first = next((i for i, (a, b) in enumerate(zip(hf, ids, strict=False)) if a != b),
                         min(len(hf), len(ids)))
            differences.append(Difference(
                "tokenization", f"llama.cpp tokenizes {item['text'][:60]!r} differently "
                                f"from the HF tokenizer from token {first}", hf, ids))
    return rows


def _compare_special(answer: dict[str, Any], ends: list[int], tokenizer: Any,
                     differences: list[Difference]) -> dict[str, Any]:
    """BOS/EOS ids, and whether every end-of-turn id ends a generation in llama.cpp."""
    special: dict[str, Any] = {}
    for role in ("bos", "eos"):
        hf_id = getattr(tokenizer, f"{role}_token_id", None)
        special[role] = {"hf": hf_id, "llama_cpp": answer[role]}
        if hf_id is not None and int(hf_id) != int(answer[role]):
            differences.append(Difference(
                f"{role}_token_id",  # type: ignore[arg-type]
                f"llama.cpp's {role.upper()} id is {answer[role]}, the tokenizer's "
                f"{tokenizer.convert_ids_to_tokens(int(hf_id))!r} is {hf_id}", hf_id,
                answer[role]))
    special["end_of_turn"] = []
    for token_id in ends:
        eog = answer["eog"].get(str(token_id))
        token = tokenizer.convert_ids_to_tokens(token_id)
        special["end_of_turn"].append({"id": token_id, "token": token, "eog": eog})
        if eog is False:
            differences.append(Difference(
                "end_of_turn", f"{token!r} (id {token_id}, an end-of-turn token in "
                               "generation_config.json) does not end a generation in llama.cpp",
                True, False))
    return special


def _compare_template(answer: dict[str, Any], tokenizer: Any,
                      differences: list[Difference]) -> bool | None:
    template = getattr(tokenizer, "chat_template", None)
    same_template = None if not template else answer["chat_template"] == template
    if same_template is False:
        differences.append(Difference(
            "chat_template", "tokenizer.chat_template as llama.cpp reads it is missing"
            if answer["chat_template"] is None else "tokenizer.chat_template as llama.cpp "
            "reads it differs from the tokenizer's", template, answer["chat_template"]))
    return same_template


def gguf_report(tensors: GgufVerification, ran: RuntimeCheck) -> dict[str, Any]:
    """gguf_verification.json: the tensor check's report, `runtime` (this check), and the
    verdict of both (a runtime not installed leaves the tensor verdict standing)."""
    data = tensors.to_dict()
    data.update(tensors_passed=tensors.passed, tensors_message=tensors.message,
                runtime=ran.to_dict(), passed=tensors.passed and ran.status != "failed",
                message=f"{tensors.message}; {ran.message}")
    return data


__all__ = ["BOUNDED_TYPES", "NOT_INSTALLED", "RUNTIME_PACKAGE", "RUNTIME_VERSION",
           "Difference", "RuntimeCheck", "bound_rule", "gguf_report", "reference_logits",
           "run_gguf", "runtime_missing"]
