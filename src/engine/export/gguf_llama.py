"""The child half of `gguf_run`: load a GGUF in llama.cpp (llama-cpp-python) and report what
llama.cpp itself makes of it. Run as `python -m graftline.engine.export.gguf_llama REQUEST`.

Why a process of its own: llama.cpp is C++; a file it cannot handle may abort or crash the
process that loaded it, and the engine (or the console's export worker) must outlive that to
record a failed export that says so. The request is a JSON file; the answer is `result.json`
plus one `logits-<i>.npy` per probe in the request's `out` folder.

What is asked of llama.cpp, all on the CPU: the logits of every position of fixed token ids
(the KV cache in float32, so the only rounding is the file's own and the matmul inputs'),
the tokenization of texts (with and without the model's special tokens), the special token
ids, whether given ids end a generation (end-of-generation, `llama_vocab_is_eog`), the vocabulary
size and the metadata it read (the embedded chat template among it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

GGML_TYPE_F32 = 0  # ggml.h: the KV cache type that adds no rounding of its own


def _is_eog(llm: Any, token: int) -> bool | None:
    import llama_cpp

    for name, handle in (("llama_vocab_is_eog", "vocab"), ("llama_token_is_eog", "model")):
        function = getattr(llama_cpp, name, None)
        if function is None:
            continue
        target = (llama_cpp.llama_model_get_vocab(llm.model) if handle == "vocab"
                  else llm.model)
        return bool(function(target, token))
    return None


def run(request: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    out = Path(request["out"])
    longest = max([len(ids) for ids in request["ids"]] + [8])
    n_ctx = max(64, -(-(longest + 8) // 64) * 64)
    threads = int(request.get("threads") or min(4, os.cpu_count() or 1))
    llm = llama_cpp.Llama(model_path=request["model"], n_ctx=n_ctx, n_batch=n_ctx,
                          n_ubatch=n_ctx, logits_all=True, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=0, type_k=GGML_TYPE_F32,
                          type_v=GGML_TYPE_F32, verbose=False)
    n_vocab = int(llm.n_vocab())
    for index, ids in enumerate(request["ids"]):
        llm.reset()
        llm.eval(list(ids))
        scores = np.array(llm.scores[: len(ids), :n_vocab], dtype=np.float32)
        np.save(out / f"logits-{index}.npy", scores)
    tokens = []
    for index, item in enumerate(request["texts"]):
        # said before each text: llama.cpp aborts the process on some (a character its SPM
        # vocabulary has neither a token nor a byte token for), and the parent names the text
        (out / "tokenizing").write_text(str(index), encoding="utf-8")
        tokens.append(llm.tokenize(item["text"].encode("utf-8"),
                                   add_bos=bool(item["add_special"]), special=True))
    (out / "tokenizing").unlink(missing_ok=True)
    metadata = dict(llm.metadata)
    return {
        "runtime": f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}",
        "n_vocab": n_vocab,
        "tokens": [[int(t) for t in row] for row in tokens],
        "bos": int(llm.token_bos()),
        "eos": int(llm.token_eos()),
        "eog": {str(t): _is_eog(llm, int(t)) for t in request.get("eog_ids", [])},
        "chat_template": metadata.get("tokenizer.chat_template"),
        "architecture": metadata.get("general.architecture"),
    }


def quantize(source: Path, target: Path, gguf_type: str) -> int:
    """llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` calls) from
    the runtime's library: `source` (an F32 GGUF) to `target` in `gguf_type` (q4_k_m, …),
    with llama-quantize's defaults (its per-tensor type mix and fallbacks). 0 on success."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}", None)
    if ftype is None:
        print(f"llama-cpp-python has no file type {gguf_type!r}", file=sys.stderr)
        return 2
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = min(4, os.cpu_count() or 1)
    return int(llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                              ctypes.byref(params)))


IMPORT_FAILED = 3  # the exit status that says llama_cpp is there but does not import


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not (len(args) == 1 or (len(args) == 4 and args[0] == "--quantize")):
        print("usage: python -m graftline.engine.export.gguf_llama REQUEST.json\n"
              "       python -m graftline.engine.export.gguf_llama --quantize F32.gguf OUT TYPE",
              file=sys.stderr)
        return 2
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:  # a dependency missing (diskcache, say): not the file's fault
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return IMPORT_FAILED
    if args[0] == "--quantize":
        return quantize(Path(args[1]), Path(args[2]), args[3])
    request = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    result = run(request)
    (Path(request["out"]) / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
