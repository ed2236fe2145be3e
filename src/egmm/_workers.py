"""What every process-pool worker of egmm does first (training, toys, the demo's fits)."""

from __future__ import annotations

import os
import threading
import time

import torch

#: how often a worker looks whether the process that started it is still there
_PARENT_POLL_SECONDS = 1.0


def init_worker() -> None:
    """Process-pool initializer: one torch thread per worker (the workers run side by side,
    and one thread is the fastest setting for their small batches anyway), and an end with
    the parent: a worker whose parent died (a SIGKILL, which runs no cleanup) exits instead
    of running on. Such orphans had gone on training at full speed, rewriting the
    checkpoints that a rerun resumes from, and then blocked forever."""
    torch.set_num_threads(1)
    _exit_with_parent(os.getppid())


def _exit_with_parent(parent: int) -> None:
    # a daemon thread that polls the parent's pid: portable, and unlike Linux's
    # PR_SET_PDEATHSIG it does not fire when merely the thread that made the pool ends
    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if os.getppid() != parent:  # re-parented: the parent is gone
                os._exit(1)

    if parent > 1:
        threading.Thread(target=watch, name="egmm-parent-watch", daemon=True).start()
