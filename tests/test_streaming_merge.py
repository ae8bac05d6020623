"""The merge arithmetic on low-precision bases, and the ordered I/O thread behind it.

The PEFT-equality tests in test_export.py run on fp32 toy bases; real bases are bf16/fp16, where
the merge goes row block by row block through fp32. Here each layout is checked against the
plain formula `(W.float() + s · B @ A).to(dtype)` on real safetensors files.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graftline.engine.export import merge as streaming_merge
from graftline.engine.export.adapter_plan import LoraDelta
from graftline.engine.export.merge import TensorJob, merged_tensor
from graftline.engine.export.ordered_io import OrderedIO
from graftline.engine.export.safetensors import TensorInfo, read_header, read_tensor

# Rows not a multiple of the block: the last block is short.
ROWS, COLS, R = 1000, 300, 8


def _files(tmp_path: Path, base_dtype: torch.dtype, layout: str) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(ROWS, COLS, generator=g).to(base_dtype)
    if layout == "linear":  # W[out,in]: B[out,r], A[r,in]
        a, b = torch.randn(R, COLS, generator=g), torch.randn(ROWS, R, generator=g)
    else:  # W[in,out] or W[vocab,dim]: A[r,rows], B[cols,r]
        a, b = torch.randn(R, ROWS, generator=g), torch.randn(COLS, R, generator=g)
    save_file({"w": w}, str(tmp_path / "base.safetensors"))
    save_file({"a": a, "b": b}, str(tmp_path / "adapter.safetensors"))
    return tmp_path / "base.safetensors", tmp_path / "adapter.safetensors"


@pytest.mark.parametrize("layout", ["linear", "linear_t", "embedding"])
@pytest.mark.parametrize(("base_dtype", "out"), [
    (torch.bfloat16, "BF16"), (torch.bfloat16, "F32"), (torch.float16, "F16"),
    (torch.float32, "BF16"), (torch.float32, "F32"),
])
def test_blockwise_merge_equals_the_formula(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, base_dtype: torch.dtype,
    out: str,
) -> None:
    monkeypatch.setattr(streaming_merge, "_BLOCK_ELEMENTS", 7 * COLS)  # 143 blocks, one short
    base, adapter = _files(tmp_path, base_dtype, layout)
    base_info, _ = read_header(base)
    adapter_info, _ = read_header(adapter)
    scale = 0.37
    job = TensorJob("w", base, base_info["w"], LoraDelta("w", "a", "b", R, scale, layout), out)

    def read(path: Path, info: TensorInfo) -> torch.Tensor:
        with path.open("rb") as handle:
            return read_tensor(handle, info)

    got = merged_tensor(job, read, adapter_info, adapter)

    with base.open("rb") as h, adapter.open("rb") as ha:
        w = read_tensor(h, base_info["w"]).float()
        a, b = read_tensor(ha, adapter_info["a"]), read_tensor(ha, adapter_info["b"])
    delta = b @ a if layout == "linear" else (b @ a).t()
    expected = (w + scale * delta).to(got.dtype)
    assert got.dtype == streaming_merge.DTYPES[out]
    assert got.shape == (ROWS, COLS)
    # The same fp32 sum up to the GEMM's own summation order (last bits of fp32)...
    tolerance = {"BF16": 2 ** -7, "F16": 2 ** -10, "F32": 1e-5}[out]
    assert torch.allclose(got.float(), expected.float(), rtol=tolerance, atol=tolerance)
    if out != "F32":  # ...which rounding to 16 bits almost always erases
        mismatched = (got != expected).float().mean().item()
        assert mismatched < 0.01, f"{mismatched:.2%} of elements differ"


def test_ordered_io_keeps_order_and_bound() -> None:
    done: list[int] = []
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal in_flight, peak
        time.sleep(0.002 * (i % 3))
        with lock:
            done.append(i)
            in_flight -= 1

    with OrderedIO(max_in_flight=2) as io:
        for i in range(30):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            io.submit(work, i)
    assert done == list(range(30))
    assert peak <= 3  # two queued plus the one being submitted


def test_ordered_io_raises_the_first_failure_and_stops() -> None:
    ran: list[int] = []

    def work(i: int) -> None:
        if i == 3:
            raise OSError(28, "No space left on device")
        ran.append(i)

    with pytest.raises(OSError, match="No space left"), OrderedIO(max_in_flight=1) as io:
        for i in range(50):
            io.submit(work, i)
    assert ran[:3] == [0, 1, 2] and len(ran) < 50
