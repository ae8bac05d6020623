"""The streaming merge: `W + scale · B @ A`, one base tensor at a time, into new safetensors files.

Planning reads only headers and configs: `adapter_plan.analyse_adapter` maps every adapter
tensor to the base tensor it changes and refuses what cannot be merged exactly; `plan_tensors`
lays the output tensors into files. Execution (`write_shards`) reads one tensor, adds its LoRA
delta in fp32 (or writes trained token rows over it), casts it to the export dtype and streams
it to the output file, so peak memory is about the largest tensor (plus the small adapter
matrices), not the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.checkpoint_files import (
    ADAPTER_SAFETENSORS,
    MODEL_SAFETENSORS,
    shard_name,
)
from graftline.engine.export.adapter_plan import (
    AdapterPlan,
    LoraDelta,
    ModelLayout,
    TokenRows,
    must_untie,
    untied_output,
)
from graftline.engine.export.ordered_io import OrderedIO
from graftline.engine.export.safetensors import (
    DTYPES,
    NAMES,
    OutEntry,
    StreamWriter,
    TensorInfo,
    nbytes_of,
    read_tensor,
)

EXPORT_DTYPES: dict[str, str] = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where its bytes come from and what happens to them."""

    name: str
    source: Path
    info: TensorInfo
    delta: LoraDelta | None
    dtype: str  # output safetensors dtype
    tokens: TokenRows | None = None  # rows written over the (merged) tensor

    @property
    def out_bytes(self) -> int:
        return nbytes_of(self.dtype, self.info.shape)


@dataclass(frozen=True)
class OutShard:
    filename: str
    jobs: tuple[TensorJob, ...]

    @property
    def bytes(self) -> int:
        return sum(job.out_bytes for job in self.jobs)


def plan_tensors(base_tensors: dict[str, tuple[Path, TensorInfo]], adapter: AdapterPlan | None,
                 layout: ModelLayout, dtype: str, shard_size: int | None) -> tuple[OutShard, ...]:
    """Every output tensor, grouped into output files.

    Without `shard_size` the export mirrors the base's files (one output file per base shard);
    with it, tensors are packed in base order into files of at most `shard_size` bytes.
    """
    out_dtype = EXPORT_DTYPES[dtype]
    # The tied side that the base does not store is derived from the input embedding as PeftModel
    # sees it (including a replacement the adapter loads over it).
    derived = untied_output(layout, base_tensors) if must_untie(layout, adapter) else None
    groups: list[list[TensorJob]] = []
    current_source: Path | None = None
    for key, (source, info) in base_tensors.items():
        jobs = [_job(key, source, info, adapter, out_dtype)]
        if derived is not None and key == layout.input_embedding:
            seen = jobs[0]
            jobs.append(_job(derived, seen.source, seen.info, adapter, out_dtype))
        if source != current_source:
            groups.append([])
            current_source = source
        groups[-1].extend(jobs)
    if shard_size is not None:
        flat = [job for group in groups for job in group]
        groups = [[]]
        size = 0
        for job in flat:
            if groups[-1] and size + job.out_bytes > shard_size:
                groups.append([])
                size = 0
            groups[-1].append(job)
            size += job.out_bytes
    if len(groups) == 1:
        return (OutShard(MODEL_SAFETENSORS, tuple(groups[0])),)
    n = len(groups)
    return tuple(OutShard(shard_name(i + 1, n), tuple(group))
                 for i, group in enumerate(groups))


def _job(key: str, source: Path, info: TensorInfo, adapter: AdapterPlan | None,
         out_dtype: str) -> TensorJob:
    if adapter is not None and key in adapter.replacements:
        source = adapter.path / ADAPTER_SAFETENSORS
        info = adapter.headers[adapter.replacements[key]]
    delta = adapter.deltas.get(key) if adapter is not None else None
    tokens = adapter.token_rows.get(key) if adapter is not None else None
    dtype = out_dtype if info.dtype in _FLOAT_DTYPES else info.dtype
    return TensorJob(key, source, info, delta, dtype, tokens)


# fp32 rows merged at a time: small enough to stay in cache between the load, the product and
# the store, so the tensor is never materialised in fp32 (which costs more than the product).
_BLOCK_ELEMENTS = 1 << 18


def merged_tensor(job: TensorJob, read: Callable[[Path, TensorInfo], torch.Tensor],
                  adapter_headers: dict[str, TensorInfo],
                  adapter_file: Path | None) -> torch.Tensor:
    """The output tensor of one job: the base tensor plus its LoRA delta, added in fp32, cast;
    or the base tensor with its trained token rows written over it."""
    tensor = read(job.source, job.info)
    target = DTYPES[job.dtype]
    if job.tokens is not None:
        assert adapter_file is not None
        # PEFT's merge: index_copy of the rows cast to the base's dtype, then the model's cast
        new_rows = read(adapter_file, adapter_headers[job.tokens.key]).to(tensor.dtype)
        tensor = tensor.index_copy(0, torch.tensor(job.tokens.indices), new_rows)
        return tensor if tensor.dtype == target else tensor.to(target)
    if job.delta is None:
        return tensor if tensor.dtype == target else tensor.to(target)
    assert adapter_file is not None
    delta = job.delta
    a = read(adapter_file, adapter_headers[delta.a_key]).float()
    b = read(adapter_file, adapter_headers[delta.b_key]).float()
    if delta.layout == "experts":
        return _parameter_merged(tensor, a, b, delta, target)
    # W[i, :] += s · left[i, :] @ right, row by row of the stored weight:
    if delta.layout == "linear":  # W[out,in] += s · B[out,r] @ A[r,in]
        left, right = b, a
    else:  # Conv1D stores W[in,out], an embedding W[vocab,dim]: both add s · Aᵀ @ Bᵀ
        left, right = a.t().contiguous(), b.t()
    if tensor.dtype == torch.float32:
        tensor.addmm_(left, right, alpha=delta.scale)
        return tensor if target == torch.float32 else tensor.to(target)
    out = tensor if tensor.dtype == target else torch.empty(tensor.shape, dtype=target)
    rows, cols = tensor.shape
    step = max(1, _BLOCK_ELEMENTS // max(cols, 1))
    scratch = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for i in range(0, rows, step):
        j = min(i + step, rows)
        block = scratch[: j - i]
        block.copy_(tensor[i:j])
        block.addmm_(left[i:j], right, alpha=delta.scale)
        out[i:j].copy_(block)
    return out


def _parameter_merged(tensor: torch.Tensor, a: torch.Tensor, b: torch.Tensor, delta: LoraDelta,
                      target: torch.dtype) -> torch.Tensor:
    """W + scale · ΔW of a ParamWrapper, the same products PEFT forms (see _parameter_delta)."""
    merged = tensor.float()
    if delta.expert is not None and delta.rows is not None:  # one expert's stored tensor
        a_e = a.reshape(delta.experts, -1, a.shape[-1])[delta.expert]  # [r, in]
        b_e = b.reshape(b.shape[0], -1, delta.experts)[:, :, delta.expert]  # [out, r]
        start, stop = delta.rows
        merged.addmm_(b_e[start:stop], a_e, alpha=delta.scale)
        return merged.to(target)
    if delta.experts == 1 and merged.dim() == 2:
        merged.addmm_(b, a, alpha=delta.scale)
        return merged.to(target)
    a3 = a.reshape(delta.experts, -1, a.shape[-1])  # [E, r, in]
    b3 = b.reshape(b.shape[0], -1, delta.experts)  # [out, r, E]
    for e in range(delta.experts):  # one expert at a time: peak memory one expert's delta
        product = b3[:, :, e] @ a3[e]  # [out, in]
        merged[e].add_(product.t() if delta.transposed else product, alpha=delta.scale)
    return merged.to(target)


def write_shards(shards: tuple[OutShard, ...], out: Path, adapter: AdapterPlan | None,
                 on_tensor: Callable[[OutShard, TensorJob, int], None] | None = None,
                 *, fsync: bool = True) -> dict[str, str]:
    """Write every output file; returns the weight map (tensor -> file). `on_tensor` is called
    after each tensor with the bytes merged so far.

    Merging happens here; writing, kernel copies and fsyncs run behind it on one I/O thread
    (`OrderedIO`), at most a few tensors behind.
    """
    # Separate handles per thread: the merge seeks and reads while the I/O thread copies.
    reads: dict[Path, Any] = {}
    copies: dict[Path, Any] = {}

    def handle(handles: dict[Path, Any], path: Path) -> Any:
        if path not in handles:
            handles[path] = path.open("rb")
        return handles[path]

    def read(path: Path, info: TensorInfo) -> torch.Tensor:
        return read_tensor(handle(reads, path), info)

    adapter_file = adapter.path / ADAPTER_SAFETENSORS if adapter is not None else None
    adapter_headers = adapter.headers if adapter is not None else {}
    weight_map: dict[str, str] = {}
    writers: list[StreamWriter] = []
    done = 0
    try:
        with OrderedIO(max_in_flight=3) as io:
            for shard in shards:
                entries = [OutEntry(job.name, job.dtype, job.info.shape) for job in shard.jobs]
                writer = StreamWriter(out / shard.filename, entries, {"format": "pt"},
                                      fsync=fsync)
                writers.append(writer)
                for job in shard.jobs:
                    if job.delta is None and job.tokens is None and job.dtype == job.info.dtype:
                        io.submit(writer.copy_from, job.name, handle(copies, job.source),
                                  job.info)
                    else:
                        io.submit(writer.write, job.name,
                                  merged_tensor(job, read, adapter_headers, adapter_file))
                    weight_map[job.name] = shard.filename
                    done += job.out_bytes
                    if on_tensor is not None:
                        on_tensor(shard, job, done)
                io.submit(writer.close)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        for h in (*reads.values(), *copies.values()):
            h.close()
    return weight_map


__all__ = ["EXPORT_DTYPES", "NAMES", "OutShard", "TensorJob", "merged_tensor", "plan_tensors",
           "write_shards"]
