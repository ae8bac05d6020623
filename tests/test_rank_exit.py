"""A rank that leaves its process group while a peer still works must exit cleanly.

At interpreter teardown, a gloo worker thread that still has work to finish needs the GIL;
Python ends such a thread during finalization, and the C++ runtime aborts the process
("terminate called without an active exception", SIGABRT). In a distributed stage rank 1
leaves while rank 0 saves and checks; the launcher took rank 1's abort for a failure, ended
rank 0 mid-save and the finished stage was reported failed (seen about one exit in six).
`rank_main.leave` ends a rank without that teardown. Here a pending receive on rank 1 makes
the race certain: rank 0 sends after rank 1 has begun to exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

RANK_SCRIPT = """
import os, time
import torch, torch.distributed as dist
from graftline.engine.run.rank_main import leave

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
dist.broadcast(torch.tensor([rank]), 0)
if rank == 0:
    time.sleep(0.5)  # rank 1 is exiting by now
    try:
        dist.broadcast(torch.tensor([7]), 0)  # lands in rank 1's teardown, or finds it gone
    except RuntimeError:
        pass
else:
    work = dist.broadcast(torch.tensor([0]), 0, async_op=True)
    work.get_future().then(lambda fut: None)  # the gloo thread calls back into Python
leave(0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_rank_leaving_while_its_peer_works_exits_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE="2", OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True,
                              env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in (0, 1)]
    for proc in ranks:
        proc.wait(timeout=120)
    leaver = ranks[1]
    assert leaver.stderr is not None
    stderr = leaver.stderr.read()
    assert leaver.returncode == 0, stderr
    assert "terminate called" not in stderr
