"""Helpers shared by the benchmark scripts: what machine ran them, atomic JSON files, timing.

Not a package: the scripts put ``benchmarks/`` on ``sys.path`` and import it as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import egmm

RESULTS = Path(__file__).parent / "results"


def models_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line of a script that studies trained paper-toy models: its docstring as
    the description, and ``--model`` (repeatable, required)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=Path, required=True,
                    help="a trained paper-toy GMMDensity file (repeat for several)")
    return ap


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages: timings on a busy machine are slower."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def gpu_name(device: str | torch.device | None = None) -> str | None:
    """Name of the CUDA device (``device`` or the current one), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        dev = torch.device("cuda")
    return torch.cuda.get_device_name(dev)


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What the timings were taken on: platform, CPU, cores, load, torch and its threads, GPU."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "usable_cpus": usable_cpus(),
        "load_average": load_average(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "egmm": egmm.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": gpu_name(device),
    }


def model_label(path: str | Path) -> str:
    """A model file's short name in tables: its file name, with its folder where the name is
    a demo's generic ``model.egmm``."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "model.egmm" else p.name


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file + rename): a killed run never
    leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def synchronize(device: str | torch.device | None) -> None:
    """Wait for the accelerator's queued work (a no-op on CPU): CUDA calls return early."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1,
          max_seconds: float | None = None, device: str | torch.device | None = None
          ) -> dict[str, Any]:
    """Wall-clock seconds of ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed
    ones (time.perf_counter, the accelerator synchronised before and after each), stopping
    early once the timed calls add up to ``max_seconds`` (always at least one).

    Returns ``{"best", "median", "seconds": [...], "repeats"}``; the best is the least
    disturbed by other jobs on the machine, the median the more typical.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds: list[float] = []
    while len(seconds) < max(repeats, 1):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if max_seconds is not None and sum(seconds) >= max_seconds:
            break
    return {"best": min(seconds), "median": statistics.median(seconds), "seconds": seconds,
            "repeats": len(seconds)}
