"""Every process that imports the training stack collects less often from its first line
(common/heap.py): the engine, a rank, the export worker, the rehearsal child, the CLI and the
GGUF converter's driver; a program that only imports graftline keeps Python's own settings. The
export worker also keeps bitsandbytes out from its first line (common/optional_imports.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from graftline.engine.common.heap import THRESHOLDS
from graftline.engine.export.gguf_convert import DRIVER

# each entry point's main, called as its `python -m` would be, with arguments that end it early
ENTRY_POINTS = {
    "graftline.engine.run.daemon": "main(['--help'])",
    "graftline.engine.run.rank_main": "main([])",
    "graftline.engine.export.worker": "main(['--help'])",
    "graftline.engine.rehearse.inside": "main([])",
    "graftline.console.cli": "sys.argv[1:] = ['--help']; main()",
}


def test_each_entry_point_sets_the_thresholds_first_and_an_import_does_not() -> None:
    lines = ["import contextlib, gc, io, sys", "found = {}"]
    for module, call in ENTRY_POINTS.items():
        lines += [
            f"import {module} as m",
            "before = gc.get_threshold()",
            "main = m.main",
            "with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):",
            f"    {call}",
            f"found[{module!r}] = (before, gc.get_threshold(), "
            "sys.modules.pop('bitsandbytes', 'absent'))",
            "gc.set_threshold(700, 10, 10)",  # Python's default, for the next module
        ]
    lines.append("print(repr(found))")
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert set(found) == set(ENTRY_POINTS)
    for module, (before, after, bitsandbytes) in found.items():
        assert before == (700, 10, 10), f"importing {module} changed the collector"
        assert after == THRESHOLDS, module
        # the export worker keeps it out first thing (an export never loads quantized weights);
        # the others decide from the run (run/stack_imports.py), and none imported it here
        assert bitsandbytes == (None if module == "graftline.engine.export.worker"
                                else "absent"), module


# llama.cpp's converter as far as the driver needs it: what the collector was set to when the
# converter's module (and so its torch and transformers) began to import
CONVERTER_STAND_IN = """
import gc
AT_IMPORT = gc.get_threshold()
def get_model_class(name, mmproj=False):
    raise AssertionError("no model is converted here")
def main():
    print(repr(AT_IMPORT))
"""


def test_the_gguf_driver_sets_the_thresholds_before_the_converter_imports(tmp_path: Path) -> None:
    (tmp_path / "convert_hf_to_gguf.py").write_text(CONVERTER_STAND_IN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, str(DRIVER), "model-dir"], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ast.literal_eval(done.stdout.strip().splitlines()[-1]) == THRESHOLDS
