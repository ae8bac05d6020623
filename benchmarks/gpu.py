"""graftline on a real GPU: Unsloth, bitsandbytes 4-bit, bf16 and NVML, run and measured.

Two halves. `prepare` runs on a machine with a package index (not the GPU box): it downloads the
wheels the GPU box lacks, trims them (bitsandbytes keeps its CUDA 13 and CPU libraries, unsloth
drops its `studio/` web app), checks every wheel's Requires-Dist against what the box has, and
copies wheels plus the cached toy base into `.gl/gpu/`, an ignored folder that the device call
carries. `run` runs on the GPU box and writes one JSON per step (and the console's screenshot)
into `--out`:

1. the demo pipeline (examples/demo.toml) with backend "hf", then "unsloth", through the real
   engine process (`python -m graftline.engine.run.daemon`): stage results, checks, steps/s per
   stage, and the NVML telemetry the events carry (VRAM per device and for the engine's pid);
2. a random-initialised model with Llama-3.2-1B's shape (config values below, no hub; the toy
   tokenizer padded to Llama's vocabulary) for an SFT and a GRPO stage, hf vs unsloth, same data
   and steps: steps/s and peak VRAM;
3. `quantization = "4bit"` (bitsandbytes NF4) SFT + DPO on that model with both backends, then an
   export stage into the full-precision base, which verifies the export;
4. the client API's view of a finished run (latest telemetry) and the console itself, run
   headless through Textual's Pilot: its screen text and an SVG screenshot with the GPU gauges;
5. export throughput: the streaming merge on the CPU cores and with the LoRA products on the GPU,
   each divided by a plain copy + fsync of the same base (benchmarks/export.py's synthetic base).

`run --smoke --device cpu` runs the same code on a CPU with tiny sizes and the hf backend only;
tests/test_gpu_script.py does that so this script cannot rot. docs/backends.md ("GPU plan")
holds the exact device calls.

  python benchmarks/gpu.py prepare                      # here: wheels + toy base -> .gl/gpu/
  python3 benchmarks/gpu.py run --out $OUT              # there: every step, JSON per step
  python benchmarks/gpu.py run --smoke --device cpu --out /tmp/x --steps 1,4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GPU_DIR = REPO / ".gl" / "gpu"  # ignored (.gitignore: /.gl/); named in the run tool's carry
CARRY_LIMIT = 64 * 2**20  # what one device call may carry, the working tree included

# --- what the GPU box has, and what it needs carried -------------------------------------------

# The box's Python 3.12 packages (/work/.library/device/KINDS.md, "Python packages already
# there", read 2026-11-17), normalised names.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())  # noqa: SIM905 (a readable block, not a 2,600-character line)

# Carried, at the versions this project is tested with (constraints-cpu.txt, the CPU venv).
CARRY = {
    # graftline's own needs the box lacks
    "trl": "1.15.0", "datasets": "4.8.5", "pydantic": "2.14.4", "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0", "typing-inspection": "0.4.5", "textual": "8.2.8",
    "bitsandbytes": "0.50.2",
    # datasets' (dill, multiprocess pinned by it; fsspec <= 2026.2.0, the box's may be newer)
    "dill": "0.4.1", "multiprocess": "0.70.19", "fsspec": "2026.2.0",
    # textual's (markdown-it-py[linkify], mdit-py-plugins, platformdirs)
    "mdit-py-plugins": "0.7.0", "linkify-it-py": "2.2.0", "uc-micro-py": "1.0.3",
    "platformdirs": "4.14.8",
    # unsloth and unsloth_zoo, and what their Requires-Dist names that the box lacks
    "unsloth": "2026.10.7", "unsloth-zoo": "2026.10.7", "tyro": "1.0.17",
    "docstring-parser": "0.18.0", "typeguard": "4.6.1", "shtab": "1.13.0", "nest-asyncio": "1.6.0",
    "structlog": "26.1.0", "msgspec": "0.23.0", "cut-cross-entropy": "25.1.1",
    "torchao": "0.18.0", "hf-transfer": "0.1.9",
}
# Named by a Requires-Dist but left behind, and why.
OPTIONAL = {
    "xformers": "each xformers wheel is built for one torch release (none for torch 2.11 + CUDA "
                "13 is certain); unsloth/models/_utils.py catches ModuleNotFoundError and uses "
                "PyTorch attention (SDPA)",
    "diffusers": "only unsloth's studio app and diffusion models import it; nothing that "
                 "FastLanguageModel loads",
}
# Trimmed out of wheels to fit one call: bitsandbytes' libraries for other CUDA/ROCm/XPU
# releases (torch 2.11 there is CUDA 13.0: bitsandbytes loads libbitsandbytes_cuda130.so), and
# unsloth's studio/ web app (a top-level package beside unsloth/, never imported by it).
KEEP_BNB_LIBS = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so",
                 "libbitsandbytes_cuda132.so")
MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "platform_release": "", "platform_version": "", "implementation_version": "3.12.3",
              "extra": ""}
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64", "any")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def requirements(wheel: Path) -> list[tuple[str, str]]:
    """(name, requirement text) of every Requires-Dist that applies on the box (Python 3.12,
    Linux x86_64, no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    found = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or req.marker.evaluate(MARKER_ENV):
            found.append((normalise(req.name), str(req)))
    return found


def closure(wheels: Iterable[Path]) -> dict[str, list[str]]:
    """For every requirement of the carried wheels: who needs it, and where it comes from.
    Raises SystemExit naming what is neither on the box, carried nor known optional."""
    wheels = list(wheels)
    carried = {wheel_name(w) for w in wheels}
    table: dict[str, list[str]] = {}
    missing = []
    for wheel in wheels:
        for name, text in requirements(wheel):
            source = ("carried" if name in carried else "on the box" if name in DEVICE_HAS
                      else "optional, not carried" if name in OPTIONAL else None)
            if source is None:
                missing.append(f"{wheel.name}: {text}")
            table.setdefault(f"{name} ({source})", []).append(wheel_name(wheel))
    if missing:
        raise SystemExit("requirements neither on the box nor carried:\n  " +
                         "\n  ".join(missing))
    return table


def rewrite_wheel(src: Path, dst: Path, keep: Callable[[str], bool]) -> int:
    """Copy a wheel without the members `keep` rejects; RECORD lists what is left. Files kept."""
    removed = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        dropped = set()
        for info in zin.infolist():
            if info.filename != record and not keep(info.filename):
                dropped.add(info.filename)
                removed += 1
                continue
            if info.filename == record:
                continue
            zout.writestr(info, zin.read(info.filename))
        rows = [row for row in zin.read(record).decode().splitlines()
                if row.split(",", 1)[0] not in dropped]
        zout.writestr(record, "\n".join(rows) + "\n")
    return removed


def trim(wheel: Path, out_dir: Path) -> Path:
    name = wheel_name(wheel)
    target = out_dir / wheel.name
    if name == "bitsandbytes":
        rewrite_wheel(wheel, target, lambda n: not (n.startswith("bitsandbytes/libbitsandbytes_")
                                                    and n.rsplit("/", 1)[-1] not in KEEP_BNB_LIBS))
    elif name == "unsloth":
        rewrite_wheel(wheel, target, lambda n: not n.startswith("studio/"))
    else:
        shutil.copyfile(wheel, target)
    return target


def tree_bytes(repo: Path) -> int:
    """What a device call sends besides carried paths: tracked and untracked, not ignored."""
    files = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    return sum((repo / f).stat().st_size for f in files.decode().split("\0")
               if f and (repo / f).is_file())


def prepare(args: argparse.Namespace) -> None:
    cache = Path(args.download_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for name, version in CARRY.items():
        spec = f"{name}=={version}" if version else name
        have = [w for w in cache.glob("*.whl") if wheel_name(w) == normalise(name)]
        if have:
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(cache)]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run([*cmd, spec], check=True)
    wheels = sorted(w for w in cache.glob("*.whl") if wheel_name(w) in {normalise(n) for n in
                                                                        CARRY})
    names = [wheel_name(w) for w in wheels]
    if len(names) != len(set(names)):
        raise SystemExit(f"two versions of one package in {cache}: remove one ({names})")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    trimmed = [trim(w, out / "wheels") for w in wheels]
    print(f"{'wheel':<40}{'downloaded':>12}{'carried':>10}")
    for raw, small in zip(wheels, trimmed, strict=True):
        label = "-".join(raw.name.split("-")[:2])
        print(f"{label:<40}{raw.stat().st_size / 2**20:>10.2f}Mi"
              f"{small.stat().st_size / 2**20:>8.2f}Mi")
    print("\nRequires-Dist (Python 3.12, linux x86_64, no extras) of the carried wheels:")
    for need, by in sorted(closure(trimmed).items()):
        print(f"  {need:<40} <- {', '.join(sorted(set(by)))}")
    for name, why in OPTIONAL.items():
        print(f"  left out: {name}: {why}")
    from graftline.engine.toy.model import build_base

    toy = build_base()  # the demo's base, so the box does not pre-train it again
    shutil.copytree(toy, out / "cache" / "toy-base" / toy.name)
    carried = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tree = tree_bytes(REPO)
    total = carried + tree
    print(f"\n{out}: {carried / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; "
          f"one call carries {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    if total > CARRY_LIMIT:
        raise SystemExit("over the device call's limit: see docs/backends.md, GPU plan")


# --- running on the box -------------------------------------------------------------------------

# meta-llama/Llama-3.2-1B's config.json, written out (no hub): the shape, not the weights.
LLAMA_3_2_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 128256,
}


@dataclass(frozen=True)
class Sizes:
    """Steps and shapes: full on the GPU, tiny for `--smoke` (the CPU test)."""

    demo_steps: int | None  # a cap on every demo stage's max_steps; None: the demo's own
    big_sft_steps: int
    big_grpo_steps: int
    big_dpo_steps: int
    batch: int
    shrink: bool  # the 1B config through rehearse.twin.shrink_config (2 layers, 64 wide)
    export_layers: int
    export_shape: tuple[int, int, int] | None  # (hidden, intermediate, vocab); None: export.py's


FULL = Sizes(60, 60, 20, 30, 8, False, 8, None)
SMOKE = Sizes(2, 2, 2, 2, 4, True, 1, (128, 256, 1000))


def log(message: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_importable() -> dict[str, str]:
    """graftline importable here and in the engine's subprocesses: src/ is the package."""
    try:
        import graftline  # noqa: F401
    except ImportError:
        pkg = Path(tempfile.mkdtemp(prefix="graftline-pkg-"))
        (pkg / "graftline").symlink_to(REPO / "src")
        sys.path.insert(0, str(pkg))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(pkg), os.environ.get("PYTHONPATH", "")) if p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if (GPU_DIR / "cache").is_dir():
        os.environ.setdefault("GRAFTLINE_CACHE", str(GPU_DIR / "cache"))
    return dict(os.environ)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate",
                 "bitsandbytes", "unsloth", "unsloth_zoo", "nvidia-ml-py", "textual", "triton",
                 "xformers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    import torch

    found["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def synthetic_tokenizer(vocab_size: int) -> Any:
    """The toy tokenizer (one token per character, its chat template) padded with filler tokens
    to `vocab_size`, so every id a random model samples decodes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from graftline.engine.toy import tokenizer as toy

    words = toy.SPECIAL_TOKENS + list(toy.CHARACTERS)
    words += [f"<x{i}>" for i in range(max(0, vocab_size - len(words)))]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)},
                                      unk_token=toy.UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=toy.BOS, eos_token=toy.EOS, unk_token=toy.UNK,
        pad_token=toy.PAD, additional_special_tokens=[toy.USER, toy.ASSISTANT, toy.END])
    tokenizer.chat_template = toy.CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def llama_1b_config(tokenizer: Any, *, shrink: bool) -> Any:
    """Llama-3.2-1B's config with the tokenizer's special ids; `shrink`: the rehearsal twin's
    tiny size of the same family (what the CPU test builds)."""
    from transformers import AutoConfig

    from graftline.engine.rehearse.twin import DROP_KEYS, shrink_config

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if shrink:
        model_type, kwargs = shrink_config(LLAMA_3_2_1B, vocab_size=len(tokenizer),
                                           special_ids=ids)
    else:
        model_type = LLAMA_3_2_1B["model_type"]
        kwargs = {k: v for k, v in LLAMA_3_2_1B.items() if k not in DROP_KEYS} | ids
    return AutoConfig.for_model(model_type, **kwargs)


def build_random_model(out: Path, *, device: str, shrink: bool, seed: int = 0) -> dict[str, Any]:
    """A random-initialised Llama-3.2-1B-shaped model with the padded toy tokenizer, saved as a
    local model directory (bf16 on a GPU, as Llama-3.2-1B ships; fp32 on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from graftline.engine.toy.model import generation_config

    vocab = len(synthetic_tokenizer(0)) if shrink else LLAMA_3_2_1B["vocab_size"]
    tokenizer = synthetic_tokenizer(vocab)
    config = llama_1b_config(tokenizer, shrink=shrink)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(seed)
    began = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"path": str(out), "params": params, "dtype": str(dtype).removeprefix("torch."),
            "layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "vocab": config.vocab_size, "build_s": round(time.perf_counter() - began, 1)}


# --- pipelines ---------------------------------------------------------------------------------

def demo_pipeline(work: Path, backend: str, steps: int | None) -> Path:
    """examples/ copied into `work` (its relative runs_dir and export paths land there), with
    the backend set and, for a smoke run, every max_steps and the data cut."""
    examples = work / "examples"
    shutil.copytree(REPO / "examples", examples, ignore=shutil.ignore_patterns("runs"))
    path = examples / "demo.toml"
    text = path.read_text(encoding="utf-8")
    text, n = re.subn(r'(?m)^backend = "auto"', f'backend = "{backend}"', text)
    if n != 1:
        raise SystemExit("examples/demo.toml: no `backend = \"auto\"` line to replace")
    if steps is not None:  # a cap: the demo's save_steps stay (a save past the end never runs)
        text = re.sub(r"max_steps = (\d+)", lambda m: f"max_steps = {min(int(m[1]), steps)}",
                      text)
        # and its data cut to the rows the capped steps can reach: TRL tokenizes every row, and
        # DPO's precomputed reference scores every row, before the first step
        reach = steps * max(int(b) for b in re.findall(r"batch_size = (\d+)", text))
        for data in (examples / "data").glob("*.jsonl"):
            lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
            data.write_text("".join(lines[:reach]), encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    return path


def big_pipeline(work: Path, name: str, base: Path, backend: str, kinds: tuple[str, ...],
                 sizes: Sizes, quantization: str = "none") -> Path:
    """SFT (+ GRPO or DPO, + export) on the random 1B-shaped base, the toy data cut to the rows
    the steps reach (TRL tokenizes, and DPO's precomputed reference scores, every row before the
    first step: rows no step reaches would only add to the stage's time)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    reach = sizes.batch * max(sizes.big_sft_steps, sizes.big_grpo_steps, sizes.big_dpo_steps)
    for name_ in ("sft.jsonl", "grpo.jsonl", "prefs.jsonl"):
        lines = (REPO / "examples" / "data" / name_).read_text(encoding="utf-8").splitlines(
            keepends=True)
        (data / name_).write_text("".join(lines[:reach]), encoding="utf-8")
    stages = [f"""
[[stage]]
name = "sft"
kind = "sft"
data = "{data / 'sft.jsonl'}"
lora = {{ r = 16, alpha = 32 }}
train = {{ max_steps = {sizes.big_sft_steps}, lr = 1e-4 }}
"""]
    if "grpo" in kinds:
        stages.append(f"""
[[stage]]
name = "grpo"
kind = "grpo"
adapter = "continue"
data = "{data / 'grpo.jsonl'}"
reward = ["exact_match"]
num_generations = 8
max_completion_length = 16
train = {{ max_steps = {sizes.big_grpo_steps}, lr = 5e-5 }}
""")
    if "dpo" in kinds:
        stages.append(f"""
[[stage]]
name = "dpo"
kind = "dpo"
adapter = "continue"
data = "{data / 'prefs.jsonl'}"
train = {{ max_steps = {sizes.big_dpo_steps}, lr = 5e-5 }}
""")
    if "export" in kinds:
        stages.append(f"""
[[stage]]
name = "export"
kind = "export"
from = "{kinds[-2]}"
out = "{work / 'exports' / name}"
dtype = "bfloat16"
force = true
""")
    text = f"""[pipeline]
name = "{name}"
base = "{base}"
backend = "{backend}"
quantization = "{quantization}"
runs_dir = "{work / 'runs'}"
seed = 0

[defaults]
train = {{ batch_size = {sizes.batch}, max_length = 128, logging_steps = 1 }}
lora = {{ dropout = 0.0, target_modules = "all-linear" }}
""" + "".join(stages)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_engine(pipeline_path: Path, timeout: float, env: dict[str, str]) -> Path:
    """The real engine process on a fresh run directory, in the foreground; its run dir."""
    from graftline.engine.pipeline.file import load
    from graftline.engine.run.launch import create_run

    pf = load(pipeline_path)
    run_dir = create_run(pf, pf.resolve(pf.pipeline.pipeline.runs_dir))
    env = dict(env, GRAFTLINE_TELEMETRY_EVERY=env.get("GRAFTLINE_TELEMETRY_EVERY", "0.5"),
               PYTHONUNBUFFERED="1")
    with open(run_dir / "engine.log", "ab") as out:
        try:
            subprocess.run([sys.executable, "-m", "graftline.engine.run.daemon", str(run_dir)],
                           stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                           check=False)
        except subprocess.TimeoutExpired:
            out.write(f"\n[gpu.py] engine killed after {timeout:.0f} s\n".encode())
    return run_dir


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Per stage: status, seconds, steps/s, checks, NVML telemetry; the run's outcome."""
    from graftline.engine.run.events import read_events

    events, _ = read_events(run_dir / "events.jsonl")
    stages: dict[str, dict[str, Any]] = {}
    run: dict[str, Any] = {"run_dir": str(run_dir), "status": None, "message": None,
                           "backend": None, "errors": []}
    telemetry = {"samples": 0, "with_gpus": 0, "max_used": {}, "total": {},
                 "max_proc_gpu_bytes": None, "gpu_reason": None}
    for event in events:
        data, stage = event.data, event.stage
        if event.type == "run_started":
            run["backend"] = data.get("backend")
        elif event.type == "stage_started" and stage:
            stages[stage] = {"kind": data.get("kind"), "max_steps": data.get("max_steps"),
                             "checks": {}, "peak_used": None, "peak_proc": None}
        elif event.type == "metrics" and stage in stages:
            if data.get("steps_per_s") is not None:
                stages[stage]["last_steps_per_s"] = data["steps_per_s"]
            if data.get("global_step") is not None:
                stages[stage]["last_step"] = data.get("step")
        elif event.type == "check_result" and stage in stages:
            status = str(data.get("status"))
            stages[stage]["checks"][status] = stages[stage]["checks"].get(status, 0) + 1
            if status == "fail":
                stages[stage].setdefault("failed_checks", []).append(
                    {k: data.get(k) for k in ("name", "message")})
        elif event.type == "stage_finished" and stage in stages:
            entry = stages[stage]
            entry.update(status=data.get("status"), seconds=data.get("seconds"))
            steps = entry.get("max_steps")
            if steps and data.get("seconds"):
                entry["steps_per_s"] = round(steps / data["seconds"], 3)
            metrics = data.get("metrics") or {}
            for key in ("train_steps_per_second", "train_runtime", "loss_last", "checks_seconds"):
                if key in metrics:
                    entry[key] = metrics[key]
        elif event.type == "telemetry":
            telemetry["samples"] += 1
            gpus = data.get("gpus")
            if not gpus:
                telemetry["gpu_reason"] = data.get("gpu_reason")
                continue
            telemetry["with_gpus"] += 1
            for gpu in gpus:
                key = str(gpu.get("index"))
                telemetry["max_used"][key] = max(telemetry["max_used"].get(key, 0), gpu["used"])
                telemetry["total"][key] = gpu.get("total")
            proc = data.get("proc_gpu_bytes")
            if proc is not None:
                telemetry["max_proc_gpu_bytes"] = max(telemetry["max_proc_gpu_bytes"] or 0, proc)
            if stage in stages:
                used = max(g["used"] for g in gpus)
                stages[stage]["peak_used"] = max(stages[stage]["peak_used"] or 0, used)
                if proc is not None:
                    stages[stage]["peak_proc"] = max(stages[stage]["peak_proc"] or 0, proc)
        elif event.type == "error":
            run["errors"].append({k: data.get(k) for k in ("message", "fix")} | {"stage": stage})
        elif event.type == "run_finished":
            run.update(status=data.get("status"), message=data.get("message"))
    log_path = run_dir / "engine.log"
    if run["status"] != "finished" and log_path.is_file():
        run["engine_log_tail"] = log_path.read_text(errors="replace")[-4000:]
    return run | {"stages": stages, "telemetry": telemetry}


def idle_gpu_used() -> int | None:
    """NVML's used bytes on device 0 before a run: peak VRAM is read as peak used − this."""
    try:
        import pynvml

        pynvml.nvmlInit()
        used = int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
        pynvml.nvmlShutdown()
        return used
    except Exception:
        return None


def backends_for(device: str) -> list[str]:
    return ["hf", "unsloth"] if device == "cuda" else ["hf"]


def timed_run(pipeline_path: Path, budget: float, env: dict[str, str]) -> dict[str, Any]:
    idle = idle_gpu_used()
    began = time.perf_counter()
    run_dir = run_engine(pipeline_path, budget, env)
    summary = summarize_run(run_dir)
    summary["wall_s"] = round(time.perf_counter() - began, 1)
    summary["idle_gpu_used"] = idle
    if idle is not None:
        for entry in summary["stages"].values():
            if entry.get("peak_used") is not None:
                entry["peak_vram_over_idle"] = entry["peak_used"] - idle
    return summary


# --- the steps ----------------------------------------------------------------------------------

# Relative shares of the time budget per engine run (unsloth's first import compiles kernels).
WEIGHTS = {"1-hf": 12, "1-unsloth": 20, "4": 3, "2-hf": 10, "2-unsloth": 12, "3-hf": 12,
           "3-unsloth": 15, "5": 12}


@dataclass
class Ctx:
    out: Path
    work: Path
    device: str
    sizes: Sizes
    env: dict[str, str]
    deadline: float
    pending: list[str]  # WEIGHTS keys not started yet

    def budget(self, key: str) -> float:
        """Seconds the job `key` may take: its share of what is left, at least 20."""
        left = self.deadline - time.monotonic()
        total = sum(WEIGHTS[k] for k in self.pending) or 1
        share = WEIGHTS[key] / total
        if key in self.pending:
            self.pending.remove(key)
        return max(20.0, left * share)


def step1(ctx: Ctx) -> dict[str, Any]:
    """The demo pipeline, each backend, through the real engine; NVML in its events."""
    result: dict[str, Any] = {}
    backends = backends_for(ctx.device)
    for backend in backends:
        path = demo_pipeline(ctx.work / f"demo-{backend}", backend, ctx.sizes.demo_steps)
        log(f"step 1: demo, backend {backend}")
        result[backend] = timed_run(path, ctx.budget(f"1-{backend}"), ctx.env)
    if ctx.device == "cpu":
        result["unsloth"] = {"skipped": "needs a CUDA GPU"}
    return result


def big_base(ctx: Ctx) -> dict[str, Any]:
    target = ctx.work / "llama-3.2-1b-random"
    info_file = target / "gpu_py_build.json"
    if info_file.is_file():
        return json.loads(info_file.read_text())
    log("building the random Llama-3.2-1B-shaped base")
    info = build_random_model(target, device=ctx.device, shrink=ctx.sizes.shrink)
    info_file.write_text(json.dumps(info))
    return info


def step2(ctx: Ctx) -> dict[str, Any]:
    """SFT + GRPO on the random 1B-shaped base, hf vs unsloth, same data and steps."""
    base = big_base(ctx)
    result: dict[str, Any] = {"base": base}
    backends = backends_for(ctx.device)
    for backend in backends:
        path = big_pipeline(ctx.work / "big", f"bf16-{backend}", Path(base["path"]), backend,
                            ("sft", "grpo"), ctx.sizes)
        log(f"step 2: SFT + GRPO, backend {backend}")
        result[backend] = timed_run(path, ctx.budget(f"2-{backend}"), ctx.env)
    return result


def step3(ctx: Ctx) -> dict[str, Any]:
    """4-bit NF4 SFT + DPO, both backends, then export into the full-precision base."""
    base = big_base(ctx)
    result: dict[str, Any] = {"base": base}
    backends = backends_for(ctx.device)
    for backend in backends:
        path = big_pipeline(ctx.work / "big", f"nf4-{backend}", Path(base["path"]), backend,
                            ("sft", "dpo", "export"), ctx.sizes, quantization="4bit")
        log(f"step 3: 4-bit SFT + DPO + export, backend {backend}")
        result[backend] = timed_run(path, ctx.budget(f"3-{backend}"), ctx.env)
    return result


async def _console_screen(run_dir: Path, out: Path) -> dict[str, Any]:
    from graftline.console.app import GraftlineApp

    app = GraftlineApp(run_dir, run_dir.parent, ascii_only=False)
    async with app.run_test(size=(120, 40)) as pilot:
        text = ""
        for _ in range(60):  # up to ~6 s for the history to load and the gauges to draw
            await pilot.pause(0.1)
            text = "\n".join(s.text for s in app.screen._compositor.render_strips())
            # a finished run's panel says the engine is gone (the gauges show while one runs)
            if "GPU0" in text or "no GPU" in text or "engine not running" in text:
                break
        await pilot.pause(0.3)
        text = "\n".join(s.text for s in app.screen._compositor.render_strips())
        app.save_screenshot(filename="console.svg", path=str(out))
    return {"screen": text, "gpu_gauge_lines": [line for line in text.splitlines()
                                                if "GPU" in line or "VRAM" in line]}


def step4(ctx: Ctx, runs: list[Path]) -> dict[str, Any]:
    """The client API's latest telemetry of a finished run, and the console's GPU gauges."""
    import asyncio

    from graftline.engine.run import read_fold

    ctx.budget("4")  # quick: a few seconds of Pilot
    if not runs:
        return {"skipped": "no run directory from step 1"}
    run_dir = runs[0]
    result: dict[str, Any] = {"run_dir": str(run_dir)}
    fold = read_fold(run_dir)
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    latest = [r for r in rows if r.get("type") == "telemetry"]
    result["client"] = {"stages": {name: view.status for name, view in fold.stages.items()},
                        "latest_telemetry": latest[-1]["data"] if latest else None}
    try:
        result["console"] = asyncio.run(_console_screen(run_dir, ctx.out))
    except Exception as exc:
        result["console"] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-3000:]}
    return result


GPU_MERGE_JOB = """
import torch
from graftline.engine.export import merge
from graftline.engine.export.writer import plan_export, run_export

def gpu_merged_tensor(job, read, adapter_headers, adapter_file):
    # The engine's merge with the LoRA product on the GPU: W + s*B@A in fp32 there, cast back.
    tensor = read(job.source, job.info)
    target = merge.DTYPES[job.dtype]
    if job.delta is None:
        return tensor if tensor.dtype == target else tensor.to(target)
    d = job.delta
    a = read(adapter_file, adapter_headers[d.a_key]).to("cuda", torch.float32)
    b = read(adapter_file, adapter_headers[d.b_key]).to("cuda", torch.float32)
    left, right = (b, a) if d.layout == "linear" else (a.t(), b.t())
    w = tensor.to("cuda", non_blocking=True).float()
    w.addmm_(left, right, alpha=d.scale)
    return w.to(target).cpu()

merge.merged_tensor = gpu_merged_tensor
torch.cuda.init()
t0 = time.perf_counter()
run_export(plan_export(Path(a.adapter), Path(a.out), dtype="bfloat16", verify=False))
"""


def step5(ctx: Ctx) -> dict[str, Any]:
    """Streaming merge (export) throughput on CPU and GPU ÷ copy + fsync of the base."""
    if ctx.budget("5") < 60 and not ctx.sizes.shrink:
        return {"skipped": "under 60 s of the budget left"}
    sys.path.insert(0, str(REPO / "benchmarks"))
    import export as bench  # benchmarks/export.py: its synthetic base and job runner

    if ctx.sizes.export_shape is not None:
        bench.HIDDEN, bench.INTERMEDIATE, bench.VOCAB = ctx.sizes.export_shape
        bench.HEADS, bench.RANK = 4, 8
    jobs = {"graftline-cpu": bench.JOBS["graftline"], "copy+fsync": bench.JOBS["copy+fsync"]}
    if ctx.device == "cuda":
        jobs["graftline-gpu"] = GPU_MERGE_JOB
    bench.JOBS.update(jobs)
    work = ctx.work / "export-bench"
    work.mkdir(parents=True, exist_ok=True)
    base, adapter = bench.build(work, ctx.sizes.export_layers, 300 * 10**6)
    base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    results: dict[str, dict[str, float]] = {}
    for _round in range(1 if ctx.sizes.shrink else 2):
        for name in jobs:
            os.sync()
            env_cpu = name == "graftline-cpu"
            saved = os.environ.get("CUDA_VISIBLE_DEVICES")
            if env_cpu:
                os.environ["CUDA_VISIBLE_DEVICES"] = ""
            try:
                got = bench.run_job(name, base, adapter, work / f"out-{name}")
            finally:
                if env_cpu:
                    if saved is None:
                        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                    else:
                        os.environ["CUDA_VISIBLE_DEVICES"] = saved
            shutil.rmtree(work / f"out-{name}")
            best = results.setdefault(name, got)
            best["wall"] = min(best["wall"], got["wall"])
            best["rss"] = max(best["rss"], got["rss"])
    copy = results["copy+fsync"]["wall"]
    out = {"base_bytes": base_bytes, "layers": ctx.sizes.export_layers, "cpus": os.cpu_count(),
           "jobs": {n: r | {"gb_per_s": round(base_bytes / r["wall"] / 1e9, 3)}
                    for n, r in results.items()}}
    for name in ("graftline-cpu", "graftline-gpu"):
        if name in results:
            out[f"{name} / (copy + fsync)"] = round(copy / results[name]["wall"], 3)
    shutil.rmtree(work, ignore_errors=True)
    return out


def run(args: argparse.Namespace) -> int:
    env = ensure_importable()
    device = args.device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA GPU (use --device cpu --smoke)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="graftline-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [int(s) for s in args.steps.split(",")]
    budget = args.budget or (1800.0 if args.smoke else 500.0)
    pending = [k for k in WEIGHTS if int(k[0]) in wanted
               and (len(k) == 1 or k[2:] in backends_for(device))]
    sizes = SMOKE if args.smoke else FULL
    if args.demo_steps is not None:
        sizes = replace(sizes, demo_steps=args.demo_steps or None)
    ctx = Ctx(out, work, device, sizes, env, time.monotonic() + budget, pending)
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device,
            "smoke": args.smoke, "versions": versions(), "steps": wanted}
    (out / "versions.json").write_text(json.dumps(info, indent=2))
    log(f"versions: {json.dumps(info['versions'])}")
    failed = 0
    demo_runs: list[Path] = []
    for number in wanted:
        began = time.perf_counter()
        try:
            if number == 1:
                result = step1(ctx)
                demo_runs = [Path(r["run_dir"]) for r in result.values() if "run_dir" in r]
            elif number == 4:
                result = step4(ctx, demo_runs or sorted(work.glob("demo-*/runs/demo-*")))
            else:
                result = {2: step2, 3: step3, 5: step5}[number](ctx)
        except Exception as exc:
            failed += 1
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:]}
        result["step_wall_s"] = round(time.perf_counter() - began, 1)
        (out / f"step{number}.json").write_text(json.dumps(result, indent=2, default=str))
        log(f"step {number} done in {result['step_wall_s']} s -> {out / f'step{number}.json'}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download, trim and check the wheels; fill .gl/gpu/")
    p.add_argument("--download-dir", default="/tmp/gpuwheels")
    p.add_argument("--out", default=str(GPU_DIR))
    r = sub.add_parser("run", help="run the steps (on the GPU box), JSON per step into --out")
    r.add_argument("--out", required=True)
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--smoke", action="store_true", help="tiny sizes and steps (the CPU test)")
    r.add_argument("--steps", default="1,4,2,3,5", help="in this order")
    r.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps (default 500, smoke 1800); each engine run gets "
                        "its share (WEIGHTS) of what is left and is killed past it")
    r.add_argument("--demo-steps", type=int, default=None,
                   help="cap every demo stage's max_steps (default: 60 on the GPU, 2 in smoke; "
                        "0 = the demo's own)")
    r.add_argument("--workdir", default=None)
    r.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        ensure_importable()
        prepare(args)
        return 0
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
