"""What llama.cpp (llama-cpp-python 0.3.36, the pinned runtime) is known to run differently from
transformers on the family twins, per (family, GGUF type): the `what` of each Difference the
runtime check reports. tests/test_gguf_families.py requires exactly these (a family that starts
to pass, or fails otherwise, fails the test), and the family matrix expects those exports to
fail naming them. Measured on the twins' bases; docs/families.md says the same in words."""

from __future__ import annotations

LLAMA_CPP_DIFFERS: dict[tuple[str, str], frozenset[str]] = {
    # only the character-level stand-in (the twin's BPE is refused before conversion):
    # transformers 5 reads a qwen2 folder's tokenizer as Qwen2's BPE, not as the file says
    ("qwen2", "f32"): frozenset({"tokenization"}),
    ("qwen2", "q8_0"): frozenset({"tokenization"}),
}
