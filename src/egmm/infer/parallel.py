"""Running toys: serially, on local processes, on any ``concurrent.futures.Executor`` or Dask.

Every toy is a pure function of (job, toy index): its random numbers come from its own seed
(see :func:`egmm.infer.toys.toy_seed`), its fits start from fixed values, and every worker
evaluates torch with one thread. So results do not depend on where a toy runs or how toys
are split into tasks: serial, a process pool and a Dask cluster give identical numbers.

Results can be appended to a JSON-lines file as they finish (``out=``, one line per toy with
its key, index and seed, flushed after every line). Running the same study again with the same
``out`` skips the toys already there, so a killed study resumes where it stopped and ends with
exactly the results of an uninterrupted run. A task whose worker is lost (a killed process, a
Dask worker that died) is resubmitted.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from egmm._workers import init_worker
from egmm.base import whole_number
from egmm.errors import EgmmError, InputError

try:  # POSIX: a study locks its toy file
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

try:  # cloudpickle (a dependency of dask) also ships lambdas and locally defined densities
    import cloudpickle as _pickler
except ImportError:  # pragma: no cover - plain pickle for importable functions only
    _pickler = pickle  # type: ignore[assignment]

__all__ = ["SERIAL", "ToyStore", "local_executor", "resolve_executor", "run_toys",
           "single_torch_thread"]

#: ``executor="serial"``: run every toy in this process, one after the other
SERIAL = "serial"

_WORKER_LOSS_NAMES = {"KilledWorker", "CommClosedError", "FutureCancelledError"}


# Process-pool initializer: one torch thread per worker, and an end with the parent
_init_worker = init_worker


def local_executor(max_workers: int | None = None, *, mp_context: Any = None
                   ) -> cf.ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``max_workers`` processes (default: the usable CPUs),
    each evaluating torch with one thread.

    This is what ``executor=None`` creates for one call; create it yourself to reuse the
    workers across calls (e.g. the many hypothesis tests of a toy-based upper limit)::

        with local_executor() as pool:
            upper_limit(cost, "mu", calctype="toybased", executor=pool)

    ``mp_context``: a ``multiprocessing`` context (Python's default start method if None).
    """
    if max_workers is None:
        max_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if int(max_workers) < 1:
        raise InputError(f"max_workers must be ≥ 1, got {max_workers}")
    return cf.ProcessPoolExecutor(int(max_workers), mp_context=mp_context,
                                  initializer=_init_worker)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Evaluate torch with one thread inside the block (restored afterwards): what the
    workers do, so that serial runs give bit-identical sums."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def resolve_executor(executor: Any) -> tuple[Any, bool]:
    """(executor to use, whether we own it): ``"serial"`` stays a string, ``None`` becomes a
    :func:`local_executor`, a Dask ``Client`` its ``get_executor(pure=False)``, a
    ``concurrent.futures.Executor`` itself."""
    if isinstance(executor, str):
        if executor != SERIAL:
            raise InputError(f"executor: unknown option {executor!r}; use 'serial', None, a "
                             "concurrent.futures.Executor or a dask.distributed.Client")
        return SERIAL, False
    if executor is None:
        return local_executor(), True
    if isinstance(executor, cf.Executor):
        return executor, False
    if type(executor).__module__.startswith("distributed") and hasattr(executor, "get_executor"):
        return executor.get_executor(pure=False), False
    raise InputError(f"executor: expected 'serial', None, a concurrent.futures.Executor or a "
                     f"dask.distributed.Client, got {type(executor).__name__}")


def _is_worker_loss(exc: BaseException) -> bool:
    if isinstance(exc, (cf.BrokenExecutor, cf.CancelledError)):
        return True
    return any(c.__name__ in _WORKER_LOSS_NAMES for c in type(exc).__mro__)


def _normalise(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it reads back from JSON (lists, plain floats): fresh and resumed toys
    compare equal."""
    return json.loads(json.dumps(record))


_PAYLOADS: dict[bytes, Any] = {}


def _run_chunk(payload: bytes, indices: list[int]) -> list[dict[str, Any]]:
    """Worker side: unpickle (task, job) once per worker, run the toys ``indices``."""
    digest = hashlib.sha256(payload).digest()
    if digest not in _PAYLOADS:
        while len(_PAYLOADS) >= 4:  # a few recent jobs: each holds a cost and its data
            _PAYLOADS.pop(next(iter(_PAYLOADS)))
        _PAYLOADS[digest] = pickle.loads(payload)
    task, job = _PAYLOADS[digest]
    with single_torch_thread():
        return _call(task, job, indices)


def _call(task: Callable[..., Any], job: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Records of the toys ``indices``: one call per toy, or one call for all of them when
    the task is marked ``batched`` (it then takes the list and returns one record each)."""
    if getattr(task, "batched", False):
        records = list(task(job, list(indices)))
        if sorted(int(r["index"]) for r in records) != sorted(indices):
            raise EgmmError("a batched toy task returned records for other toys than given")
        return [_normalise(r) for r in records]
    return [_normalise(task(job, i)) for i in indices]


class ToyStore:
    """Append-only JSON-lines file of toy results.

    One line per toy: ``{"key": ..., "index": ..., "seed": ..., <results>}``; ``key``
    identifies the set of toys (study, hypothesis, fingerprint of its settings), so one file
    can hold the toys of many hypothesis tests. Each line is flushed when written. A last line
    cut short by a killed process (a toy record's beginning without a newline) is discarded
    (the file is truncated to its last complete line) and that toy runs again; any other
    line that is not a toy record raises :class:`~egmm.InputError` (a file that is not
    egmm's, e.g. one JSON document without a final newline, is left untouched). A toy
    recorded as failed (``error``) runs again when its study resumes (its failure may have
    been passing, e.g. memory); the first record without an error counts. While a study
    writes, it holds an exclusive lock on the file (POSIX ``flock``): a second run of the
    same file waits for it rather than running the same toys twice.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, key: str) -> dict[int, dict[str, Any]]:
        """Records already stored under ``key``, by toy index (without the key)."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        lines = raw.splitlines(keepends=True)
        out: dict[int, dict[str, Any]] = {}
        pos = 0
        for n, line in enumerate(lines):
            last = n == len(lines) - 1
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("incomplete line")
                rec = json.loads(line)
                if not isinstance(rec, dict) or "key" not in rec or "index" not in rec:
                    raise ValueError("not a toy record")
            except ValueError as exc:
                cut = last and not line.endswith(b"\n") and line.startswith(b'{"key": ')
                if not cut:  # a complete line, or not the start of a record: not ours
                    raise InputError(f"{self.path}: line {n + 1} is not a toy record ({exc}); "
                                     "the file is corrupted or not an egmm toy file") from None
                with open(self.path, "r+b") as fh:  # a line cut short by a kill: drop it
                    fh.truncate(pos)
                break
            pos += len(line)
            if rec["key"] == key:
                rec = dict(rec)
                del rec["key"]
                i = int(rec["index"])
                if i not in out or ("error" in out[i] and "error" not in rec):
                    out[i] = rec
        return out

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the file (POSIX ``flock``; elsewhere none): one study
        reads and appends at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def writer(self, key: str) -> Iterator[Callable[[dict[str, Any]], None]]:
        """A function appending one record under ``key`` (written and flushed at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            def write(record: dict[str, Any]) -> None:
                fh.write(json.dumps({"key": key, **record}) + "\n")
                fh.flush()
            yield write


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings: the key part that tells studies apart."""
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def value_digest(cost: Any, values: Any) -> str:
    """``cost`` at ``values`` (name -> value, the cost's order) and at one point more per
    parameter (moved by a tenth of its range, or of max(1, |value|) where a limit is open),
    exactly (hex): in a toy study's key it tells apart studies of other models under the same
    names and settings, where a pickle would not do (a cost's caches change as it is
    evaluated). The moved points see changes that vanish at ``values`` (a pyhf modifier's
    variations, at its nominal value). On another machine the last bits may differ: its toys
    then run again, never mix."""
    from iminuit.util import describe

    from egmm.infer.fit import parameter_limits

    names = list(describe(cost))
    point = [float(values[n]) for n in names]
    parts = [float(cost(*point)).hex()]
    for j, (lo, hi) in enumerate(parameter_limits(cost).values()):
        step = 0.1 * ((hi - lo) if math.isfinite(hi - lo) else max(1.0, abs(point[j])))
        moved = list(point)
        moved[j] = point[j] + step if point[j] + step <= hi else point[j] - step
        try:
            parts.append(float(cost(*moved)).hex())
        except Exception as exc:  # (outside a density's range: the same for the same model)
            parts.append(type(exc).__name__)
    return parts[0] if len(parts) == 1 else hashlib.sha256(
        " ".join(parts).encode()).hexdigest()[:32]


def pickled_digest(*objects: Any) -> str:
    """A hash of the pickled objects (cloudpickle when available): tells apart jobs that carry
    different densities or closures under the same names."""
    try:
        data = _pickler.dumps(objects)
    except Exception:  # unpicklable objects cannot run in worker processes either
        return "unpicklable"
    return hashlib.sha256(data).hexdigest()[:16]


def run_toys(
    task: Callable[[Any, int], dict[str, Any]],
    job: Any,
    indices: Sequence[int],
    *,
    key: str,
    executor: Any = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str = "toys",
    callback: Callable[[dict[str, Any]], None] | None = None,
    chunk_size: int | None = None,
    max_resubmits: int = 3,
) -> list[dict[str, Any]]:
    """Run ``task(job, index)`` for every toy index; records in the order of ``indices``.

    ``task`` must be a module-level function returning a JSON-able dict with ``index`` and
    ``seed`` (or, if it has the attribute ``batched = True``, taking a list of indices and
    returning one such dict per index: toys fitted together); ``job`` everything it needs
    (pickled once, with cloudpickle when available, and unpickled once per worker). Toys
    already in ``out`` under ``key`` are not run again.

    Arguments:
        executor: ``"serial"``, ``None`` (a :func:`local_executor` for this call), any
            ``concurrent.futures.Executor`` or a ``dask.distributed.Client``.
        out: JSON-lines file the records are appended to as they finish (see
            :class:`ToyStore`); resumes a killed run.
        progress: show a tqdm progress bar.
        callback: called with every new record, after it is written.
        chunk_size: toys per task (default: a few tasks per worker, at most 16 toys each;
            for a batched task the batch size, serially 64 by default).
        max_resubmits: how often a task whose worker was lost is submitted again.
    """
    indices = [int(i) for i in indices]
    if len(set(indices)) != len(indices):
        raise InputError("run_toys: toy indices repeat (each toy runs once)")
    if chunk_size is not None:
        chunk_size = whole_number(chunk_size, "run_toys: chunk_size")
    if out is not None and Path(out).is_dir():
        raise InputError(f"out={str(out)!r} is a folder; give a file (JSON lines)")
    store = ToyStore(out) if out is not None else None
    with store.locked() if store is not None else nullcontext():
        return _run_toys(task, job, indices, key, store, executor, progress, desc, callback,
                         chunk_size, max_resubmits)


def _run_toys(task: Callable[[Any, int], dict[str, Any]], job: Any, indices: list[int],
              key: str, store: ToyStore | None, executor: Any, progress: bool, desc: str,
              callback: Callable[[dict[str, Any]], None] | None, chunk_size: int | None,
              max_resubmits: int) -> list[dict[str, Any]]:
    done = store.load(key) if store is not None else {}
    # (a toy recorded as failed runs again: its failure may have passed)
    todo = [i for i in indices if i not in done or "error" in done[i]]
    results = {i: done[i] for i in indices if i not in todo}
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), desc=desc, unit="toy",
               disable=not progress, leave=False)
    try:
        if todo:
            with (store.writer(key) if store is not None else _no_writer()) as write:
                def finish(record: dict[str, Any]) -> None:
                    results[int(record["index"])] = record
                    write(record)
                    bar.update(1)
                    if callback is not None:
                        callback(record)

                ex, owned = resolve_executor(executor)
                if isinstance(ex, str):
                    step = (chunk_size or 64) if getattr(task, "batched", False) else 1
                    with single_torch_thread():
                        for k in range(0, len(todo), step):
                            for record in _call(task, job, todo[k:k + step]):
                                finish(record)
                else:
                    _run_parallel(task, job, todo, ex, owned, finish, chunk_size,
                                  max_resubmits)
    finally:
        bar.close()
    return [results[i] for i in indices]


@contextmanager
def _no_writer() -> Iterator[Callable[[dict[str, Any]], None]]:
    yield lambda record: None


def _run_parallel(task: Callable[[Any, int], dict[str, Any]], job: Any, todo: list[int],
                  ex: Any, owned: bool, finish: Callable[[dict[str, Any]], None],
                  chunk_size: int | None, max_resubmits: int) -> None:
    payload = _pickler.dumps((task, job))
    workers = int(getattr(ex, "_max_workers", 0) or os.cpu_count() or 1)
    size = chunk_size or max(1, min(16, math.ceil(len(todo) / (4 * workers))))
    chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
    pending: dict[cf.Future[Any], tuple[list[int], int]] = {}

    def submit(chunk: list[int], attempt: int) -> None:
        nonlocal ex, owned
        try:
            fut = ex.submit(_run_chunk, payload, chunk)
        except cf.BrokenExecutor:
            if not isinstance(ex, cf.ProcessPoolExecutor):
                raise
            if not owned:
                warnings.warn("the process pool given as executor is broken (a worker died); "
                              "continuing on a new local process pool", stacklevel=4)
            else:
                ex.shutdown(wait=False, cancel_futures=True)
            ex, owned = local_executor(workers), True
            fut = ex.submit(_run_chunk, payload, chunk)
        pending[fut] = (chunk, attempt)

    try:
        for chunk in chunks:
            submit(chunk, 0)
        while pending:
            finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                if fut not in pending:
                    continue
                chunk, attempt = pending.pop(fut)
                try:
                    records = fut.result()
                except BaseException as exc:
                    if not _is_worker_loss(exc):
                        raise
                    if attempt >= max_resubmits:
                        raise EgmmError(f"toys {chunk[0]}–{chunk[-1]}: their worker was lost "
                                        f"{attempt + 1} times ({type(exc).__name__})") from exc
                    if isinstance(exc, cf.BrokenExecutor):
                        _rescue(pending, finish)  # the other tasks of a broken pool are lost
                        doomed = list(pending.values())
                        pending.clear()
                        submit(chunk, attempt + 1)
                        for c, a in doomed:
                            submit(c, a)
                    else:
                        submit(chunk, attempt + 1)
                    continue
                for record in records:
                    finish(record)
    finally:
        for fut in pending:
            fut.cancel()
        if owned:
            ex.shutdown(wait=not pending, cancel_futures=True)


def _rescue(pending: dict[cf.Future[Any], tuple[list[int], int]],
            finish: Callable[[dict[str, Any]], None]) -> None:
    """Take the results of tasks that completed before their pool broke."""
    for fut in list(pending):
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            pending.pop(fut)
            for record in fut.result():
                finish(record)
