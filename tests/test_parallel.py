"""Executors and resumable toy files: identical results everywhere, kills and lost workers.

Every toy draws from its own seed and starts its fits from the same values, and workers use one
torch thread (as the serial path does), so the records are bit-identical between serial, a
process pool and a Dask cluster, and between an interrupted-then-resumed and a straight run.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from egmm.errors import InputError
from egmm.infer import ToyCalculator, ToyStore, fit, hypotest, local_executor, toy_teststats
from egmm.infer.parallel import run_toys
from test_toys import analytic_cost


@pytest.fixture(scope="module")
def study():
    cost = analytic_cost(mu=1.0, seed=11)
    return cost, fit(cost, fixed={"mu": 1.0}).values


def run(study, executor, ntoys=20, **kwargs):
    cost, pars = study
    return toy_teststats(cost, pars, "mu", 1.0, ntoys=ntoys, seed=7, executor=executor,
                         progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(study):
    return run(study, "serial")


def test_process_pool_and_threads_give_identical_results(study, reference):
    assert reference.n_failed == 0
    with local_executor(2) as pool:
        assert run(study, pool).records == reference.records
        cost, _ = study
        serial = hypotest(1.2, cost, "mu", calctype="toybased", ntoys=8, seed=1,
                          executor="serial", track_progress=False, return_expected_set=True)
        pooled = hypotest(1.2, cost, "mu", calctype="toybased", ntoys=8, seed=1,
                          executor=pool, track_progress=False, return_expected_set=True)
        assert serial == pooled
    assert run(study, None, ntoys=6).records == reference.records[:6]  # a pool of its own
    with ThreadPoolExecutor(2) as threads:
        assert run(study, threads, ntoys=6).records == reference.records[:6]


def test_dask_cluster_gives_identical_results(study, reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert run(study, client).records == reference.records
        assert run(study, client.get_executor(), ntoys=4).records == reference.records[:4]


def test_truncated_file_resumes_with_the_same_results(study, reference, tmp_path):
    out = tmp_path / "toys.jsonl"
    assert run(study, "serial", out=out).records == reference.records
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 20
    out.write_bytes(b"".join(lines[:8]) + lines[8][:25])  # killed while writing toy 8
    ran = []
    resumed = run(study, "serial", out=out, callback=ran.append)
    assert resumed.records == reference.records
    assert sorted(r["index"] for r in ran) == list(range(8, 20))  # only the missing toys ran
    assert len(out.read_bytes().splitlines()) == 20


class Killed(Exception):
    pass


def test_interrupted_study_resumes_with_the_same_results(study, reference, tmp_path):
    out = tmp_path / "toys.jsonl"
    done = []

    def kill_after_8(record):
        done.append(record)
        if len(done) == 8:
            raise Killed

    with local_executor(2) as pool:
        with pytest.raises(Killed):
            run(study, pool, out=out, callback=kill_after_8)
        assert len(out.read_bytes().splitlines()) == 8
        assert run(study, pool, out=out).records == reference.records
    assert len(out.read_bytes().splitlines()) == 20


def test_calculator_reuses_its_toy_file(study, tmp_path):
    cost, _ = study
    out = tmp_path / "cls.jsonl"
    kw = dict(calctype="toybased", ntoys=6, seed=3, executor="serial", track_progress=False,
              out=out, return_expected_set=True)
    first = hypotest(1.3, cost, "mu", **kw)
    size = out.stat().st_size
    assert len(out.read_bytes().splitlines()) == 12  # s+b and b-only toys, keyed apart
    assert hypotest(1.3, cost, "mu", **kw) == first
    assert out.stat().st_size == size  # nothing ran again


def dying_task(job: str, index: int) -> dict:
    """Kills its worker process the first time it meets toy 3 (marker file in ``job``)."""
    marker = Path(job) / "lost-3"
    if index == 3 and not marker.exists():
        marker.touch()
        os._exit(1)
    return {"index": index, "seed": [0, index], "value": float(index) ** 2}


def test_lost_worker_toys_are_rerun(tmp_path):
    expected = [float(i) ** 2 for i in range(10)]
    records = run_toys(dying_task, str(tmp_path), range(10), key="k", executor=None,
                       progress=False, chunk_size=2)
    assert [r["value"] for r in records] == expected
    assert (tmp_path / "lost-3").exists()
    (tmp_path / "lost-3").unlink()
    with ProcessPoolExecutor(2) as pool, pytest.warns(UserWarning, match="broken"):
        records = run_toys(dying_task, str(tmp_path), range(10), key="k", executor=pool,
                           progress=False, chunk_size=2)
    assert [r["value"] for r in records] == expected


def test_bad_executor_and_corrupted_file(study, tmp_path):
    with pytest.raises(InputError, match="unknown option 'threads'"):
        run(study, "threads", ntoys=2)
    with pytest.raises(InputError, match="executor"):
        run(study, 42, ntoys=2)
    out = tmp_path / "bad.jsonl"
    out.write_text('{"key": "a", "index": 0}\nnot json\n{"key": "a", "index": 1}\n')
    with pytest.raises(InputError, match="line 2"):
        ToyStore(out).load("a")
    # a complete last line that is no toy record: refused and kept (it had been truncated
    # away as if a kill had cut it short)
    foreign = tmp_path / "results.jsonl"
    foreign.write_text('{"experiment": "important", "value": 42}\n')
    with pytest.raises(InputError, match="line 1 is not a toy record"):
        ToyStore(foreign).load("a")
    assert foreign.read_text() == '{"experiment": "important", "value": 42}\n'
    with pytest.raises(InputError, match="ntoys"):
        ToyCalculator(study[0], "mu", ntoys=-1)
    # run_toys is public: a chunk size that ran nothing (then KeyError), repeated indices
    # (run twice) and a folder for out= (IsADirectoryError) are named
    for kwargs, match in (({"chunk_size": -1}, "chunk_size"), ({"chunk_size": 2.5}, "chunk_size"),
                          ({"out": tmp_path}, "is a folder")):
        with pytest.raises(InputError, match=match):
            run_toys(flaky_task, str(tmp_path), range(3), key="k", executor="serial",
                     progress=False, **kwargs)
    with pytest.raises(InputError, match="repeat"):
        run_toys(flaky_task, str(tmp_path), [0, 1, 1], key="k", executor="serial",
                 progress=False)


def test_toy_file_tells_other_models_apart(study, tmp_path):
    """Studies with the same settings and names but another model share one out= file: the
    second runs its own toys (its key holds a toy's −2 ln L); another dataset of the same
    model reuses the toys, which do not depend on the data; reruns run nothing again."""
    cost, pars = study
    other_model = analytic_cost(mu=1.0, signal=80.0, seed=11)  # another signal yield
    other_data = analytic_cost(mu=1.0, seed=12)
    out = tmp_path / "toys.jsonl"
    kw = dict(ntoys=6, seed=7, executor="serial", progress=False)
    a = toy_teststats(cost, pars, "mu", 1.0, out=out, **kw).values
    b = toy_teststats(other_model, pars, "mu", 1.0, out=out, **kw).values
    assert len(out.read_bytes().splitlines()) == 12
    np.testing.assert_array_equal(b, toy_teststats(other_model, pars, "mu", 1.0, **kw).values)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(toy_teststats(other_data, pars, "mu", 1.0, out=out,
                                                **kw).values, a)
    np.testing.assert_array_equal(toy_teststats(cost, pars, "mu", 1.0, out=out, **kw).values, a)
    assert len(out.read_bytes().splitlines()) == 12  # nothing ran again


def flaky_task(job: str, index: int) -> dict:
    """Fails (as a fit's MemoryError would be recorded) while the marker file exists."""
    if (Path(job) / "short-of-memory").exists() and index % 3 == 0:
        return {"index": index, "seed": [0, index], "value": None,
                "error": "MemoryError: transient"}
    return {"index": index, "seed": [0, index], "value": float(index)}


def test_failed_toys_run_again_on_resume_and_one_file_has_one_writer(tmp_path):
    # a failure recorded once had stayed for good: a resume ran nothing
    out = tmp_path / "toys.jsonl"
    (tmp_path / "short-of-memory").touch()
    first = run_toys(flaky_task, str(tmp_path), range(9), key="k", executor="serial",
                     out=out, progress=False)
    assert sum("error" in r for r in first) == 3
    (tmp_path / "short-of-memory").unlink()
    ran = []
    again = run_toys(flaky_task, str(tmp_path), range(9), key="k", executor="serial",
                     out=out, progress=False, callback=ran.append)
    assert sorted(r["index"] for r in ran) == [0, 3, 6]
    assert [r["value"] for r in again] == [float(i) for i in range(9)]
    assert ToyStore(out).load("k")[3]["value"] == 3.0  # the good record wins from now on
    # two runs of one study on one file at once: the second waits for the first's lock and
    # then finds every toy done (both had run all toys, leaving duplicates)
    shared = tmp_path / "shared.jsonl"
    with ThreadPoolExecutor(2) as threads:
        done = list(threads.map(lambda _: run_toys(flaky_task, str(tmp_path), range(40),
                                                   key="s", executor="serial", out=shared,
                                                   progress=False), range(2)))
    assert done[0] == done[1] and len(shared.read_bytes().splitlines()) == 40


def test_a_one_line_file_that_is_not_a_toy_file_is_kept(tmp_path):
    # json.dump writes no final newline: such a file had been taken for a line cut short by
    # a kill and emptied
    foreign = tmp_path / "results.json"
    foreign.write_text('{"cls": 0.03, "mu": 1.0}')
    with pytest.raises(InputError, match="not a toy record"):
        ToyStore(foreign).load("a")
    assert foreign.read_text() == '{"cls": 0.03, "mu": 1.0}'


def test_a_model_change_that_vanishes_at_the_toys_point_gets_its_own_toys(tmp_path):
    # a pyhf modifier's variation changed (normsys 1.1/0.9 → 1.3/0.7), toys at its nominal
    # value: the toys' −2 ln L there is the same, and the second study reused the first's
    pyhf = pytest.importorskip("pyhf")
    from egmm.likelihood import PyhfCost

    def model(up):
        spec = {"channels": [{"name": "c", "samples": [
            {"name": "sig", "data": [5.0, 8.0],
             "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "bkg", "data": [20.0, 30.0],
             "modifiers": [{"name": "n", "type": "normsys",
                            "data": {"hi": up, "lo": 2.0 - up}}]}]}]}
        m = pyhf.Model(spec, poi_name="mu")
        return PyhfCost(m, [22.0, 31.0, *m.config.auxdata])

    out = tmp_path / "toys.jsonl"
    kw = dict(ntoys=6, seed=2, executor="serial", progress=False, out=out)
    pars = {"mu": 1.0, "n": 0.0}
    a = toy_teststats(model(1.1), pars, "mu", 1.0, **kw)
    b = toy_teststats(model(1.3), pars, "mu", 1.0, **kw)
    assert len(out.read_bytes().splitlines()) == 12  # the second ran its own toys
    fresh = toy_teststats(model(1.3), pars, "mu", 1.0, **{**kw, "out": None})
    np.testing.assert_array_equal(b.values, fresh.values)
    assert not np.array_equal(a.values, b.values)


_ORPHAN_SCRIPT = """
import concurrent.futures as cf, multiprocessing, os, sys, time
from egmm.infer.parallel import _init_worker

if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]  # a zombie has ended


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_pool_workers_end_with_a_killed_parent(tmp_path):
    """A SIGKILL of the parent runs no cleanup: its pool's workers had run on (training,
    rewriting checkpoints) and then hung; they now exit within about a second."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        time.sleep(1.5)
        assert _running(worker)  # a live parent keeps its workers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker)
    finally:
        parent.kill()
