"""train(workers=N): networks trained in worker processes give exactly the serial result.

Each spawned worker imports torch (a few seconds), so the process-pool runs here are few and
small; what can be checked in this process (the partition, that a group touches only its own
networks, the history merge) is checked here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import egmm.training
from egmm import (
    GMMDensity,
    InputError,
    LatentProjection,
    ModelFileError,
    Observable,
    ObservableSpace,
    train,
)
from egmm.training import TrainingHistory, _merge_histories, _partition, _train_units
from helpers import SMALL, toy_2d, toy_2d_scores

# EARLY_STOP's huge learning rate makes the networks stop early, at different epochs (which,
# and whether one diverges on the way, depends on the CPU's rounding: on an Intel Xeon network
# 1 diverges and stops after epoch 3, network 0 after epoch 4; on an AMD EPYC neither
# diverges, network 0 stops after epoch 3, network 1 after epoch 5)
pytestmark = pytest.mark.filterwarnings("ignore:.*validation loss not finite:RuntimeWarning")

EARLY_STOP = {"max_epochs": 60, "batch_size": 50, "lr": 0.05, "patience": 2,
              "lr_patience": 100, "progress": False}


def _last_epochs(history: TrainingHistory) -> list[int]:
    """Per network the last epoch it was trained in (``active[e][k]``: network k goes on after
    epoch e)."""
    return [next((e for e, row in zip(history.epochs, history.active) if not row[k]),
                 history.epochs[-1]) for k in range(len(history.active[0]))]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Bitwise equality holds against a serial run with one torch thread (as the workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(x, seed=0):
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    proj = LatentProjection.fit(space, x)
    torch.manual_seed(seed)
    return GMMDensity(space, ["c"], proj, **SMALL)


def _assert_same_history(a: TrainingHistory, b: TrainingHistory) -> None:
    """Field by field, NaN equal to NaN; ``seconds`` are timings and differ."""
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for name in da:
        if name != "seconds":
            np.testing.assert_equal(da[name], db[name], err_msg=name)
    assert len(a.seconds) == len(b.seconds)


def _assert_same_weights(a: GMMDensity, b: GMMDensity) -> None:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_workers_equal_serial_bitwise(capfd):
    x, th = toy_2d(200)
    serial = _model(x)
    h1 = train(serial, x, th, **EARLY_STOP)
    # the networks stop at different epochs: the merge must fill in the earlier one's rows
    last = _last_epochs(h1)
    assert h1.stopped and last[0] != last[1]
    capfd.readouterr()
    parallel = _model(x)
    h2 = train(parallel, x, th, workers=2, **EARLY_STOP)
    assert capfd.readouterr() == ("", "")  # progress=False: nothing, workers included
    _assert_same_weights(serial, parallel)
    _assert_same_history(h1, h2)
    early = int(np.argmin(last))  # no longer trained after its last epoch
    assert all(math.isnan(row[early]) for row in h2.train_loss[last[early] + 1:])
    # trained weights no longer require gradients, as after a serial run
    assert not any(p.requires_grad or p.grad is not None for p in parallel.module.parameters())


def test_workers_equal_serial_bitwise_with_scores():
    x, th = toy_2d(200)
    kwargs = {"score": toy_2d_scores(x, th), "max_epochs": 3, "batch_size": 50,
              "progress": False}
    serial, parallel = _model(x), _model(x)
    h1 = train(serial, x, th, **kwargs)
    h2 = train(parallel, x, th, workers=2, **kwargs)
    assert len(h1.val_score) == 3 and len(h1.val_score[0]) == 2
    _assert_same_weights(serial, parallel)
    _assert_same_history(h1, h2)


def test_group_trains_and_evaluates_only_its_networks(monkeypatch):
    """The loop a worker runs, here in this process for the group [1]."""
    x, th = toy_2d(200)
    serial = _model(x)
    h_all = train(serial, x, th, **EARLY_STOP)
    group = _model(x)
    untouched = {k: v.clone() for k, v in group.nets[0].state_dict().items()}
    seen = []
    original = GMMDensity.training_log_prob

    def spy(self, i, batch):
        seen.append(i)
        return original(self, i, batch)

    monkeypatch.setattr(GMMDensity, "training_log_prob", spy)
    captured = {}

    def run_group_1(model, data, unit_ids, settings, **kwargs):
        captured["history"] = _train_units(model, data, [1], settings, **kwargs)
        return captured["history"]

    monkeypatch.setattr(egmm.training, "_train_units", run_group_1)
    train(group, x, th, **EARLY_STOP)
    assert set(seen) == {1}
    for k, v in group.nets[0].state_dict().items():
        assert torch.equal(v, untouched[k])
    for k, v in group.nets[1].state_dict().items():
        assert torch.equal(v, serial.nets[1].state_dict()[k])
    h1 = captured["history"]
    stop = _last_epochs(h_all)[1]
    assert len(h1.epochs) == stop + 1  # the group ends with network 1
    for e in range(stop + 1):
        np.testing.assert_equal([row[1] for row in (h_all.train_loss[e], h_all.val_loss[e],
                                                    h_all.lr[e], h_all.active[e])],
                                [row[0] for row in (h1.train_loss[e], h1.val_loss[e],
                                                    h1.lr[e], h1.active[e])])


def test_partition_balances_weights():
    assert _partition([10, 10], 2) == [[0], [1]]
    # heaviest first onto the lighter group: 15 vs 13 (the optimum is 14 vs 14)
    assert _partition([5, 9, 4, 3, 7], 2) == [[0, 3, 4], [1, 2]]
    groups = _partition([7, 1, 1, 1, 1, 1, 1, 1], 3)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert all(groups) and [0] in groups
    assert _partition([0, 0, 0], 3) == [[0], [1], [2]]  # no empty group


def test_merge_fills_stopped_groups_as_serial():
    early = TrainingHistory(observables=[], epochs=[0, 1], train_loss=[[1.0], [0.9]],
                            val_loss=[[2.0], [2.1]], lr=[[0.1], [0.05]],
                            active=[[True], [False]], seconds=[1.0, 3.0], best_epoch=[0],
                            best_val_loss=[2.0], stopped=True)
    late = TrainingHistory(observables=[], epochs=[0, 1, 2],
                           train_loss=[[5.0, 6.0], [4.0, 5.0], [3.0, 4.0]],
                           val_loss=[[5.5, 6.5], [4.5, 5.5], [3.5, 4.5]],
                           lr=[[0.1, 0.1]] * 3, active=[[True, True]] * 3,
                           seconds=[2.0, 2.0, 2.0], best_epoch=[2, 2],
                           best_val_loss=[3.5, 4.5], stopped=False)
    m = _merge_histories(["a", "b", "c"], [[1], [0, 2]], [early, late])
    assert m.epochs == [0, 1, 2] and m.observables == ["a", "b", "c"]
    np.testing.assert_equal(m.train_loss, [[5.0, 1.0, 6.0], [4.0, 0.9, 5.0],
                                           [3.0, math.nan, 4.0]])
    assert m.val_loss[2] == [3.5, 2.1, 4.5] and m.lr[2] == [0.1, 0.05, 0.1]
    assert m.active[2] == [True, False, True] and m.seconds == [2.0, 3.0, 2.0]
    assert m.best_epoch == [2, 0, 2] and m.best_val_loss == [3.5, 2.0, 4.5]
    assert not m.stopped


def test_bad_workers():
    x, th = toy_2d(50)
    for bad in (0, -2):
        with pytest.raises(InputError, match="workers must be ≥ 1"):
            train(_model(x), x, th, workers=bad, progress=False)
    for bad in (1.5, "2", True, None):
        with pytest.raises(InputError, match="workers must be a whole number"):
            train(_model(x), x, th, workers=bad, progress=False)
    with pytest.raises(InputError, match="callback needs workers=1"):
        train(_model(x), x, th, workers=2, callback=lambda e, h: None, progress=False)


def test_checkpoint_per_worker_resumes_exactly(tmp_path):
    x, th = toy_2d(200)
    reference = _model(x)
    h_ref = train(reference, x, th, **EARLY_STOP)

    ckpt = tmp_path / "run.ckpt"
    # as if killed after epoch 2; 3 workers for 2 networks: 2 processes, one file each
    train(_model(x), x, th, workers=3, checkpoint=ckpt, **{**EARLY_STOP, "max_epochs": 2})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["run.ckpt.group1of2", "run.ckpt.group2of2"]
    # the serial run refuses the workers' files instead of silently starting afresh
    with pytest.raises(ModelFileError, match="another number of workers"):
        train(_model(x), x, th, checkpoint=ckpt, resume=True, **EARLY_STOP)
    resumed = _model(x, seed=123)  # different init: everything must come from the checkpoints
    h = train(resumed, x, th, workers=2, checkpoint=ckpt, resume=True, **EARLY_STOP)
    _assert_same_weights(reference, resumed)
    _assert_same_history(h_ref, h)


def test_workers_report_batches_to_the_parents_bar(monkeypatch, capfd):
    x, th = toy_2d(200)  # 600 events, 40 % validation: 360 to train on, 36 batches of 10
    reports = []

    def with_report(*args, **kwargs):
        return _train_units(*args, **kwargs, report=reports.append)

    # the loop a worker runs, in this process: told in fives, the rest at each epoch's end
    monkeypatch.setattr(egmm.training, "_REPORT_BATCHES", 5)
    monkeypatch.setattr(egmm.training, "_train_units", with_report)
    train(_model(x), x, th, max_epochs=2, batch_size=10, progress=False)
    assert reports == ([5] * 7 + [1]) * 2
    monkeypatch.undo()
    # two worker processes: the parent's bar counts both groups' batches (2 × 2 × 36)
    total = 2 * sum(reports)
    capfd.readouterr()
    train(_model(x), x, th, max_epochs=2, batch_size=10, workers=2, progress=True)
    err = capfd.readouterr().err
    assert "training in 2 processes" in err and f"{total}/{total}" in err


@pytest.mark.parametrize("progress", [False, True])
def test_script_without_main_guard_gets_a_clear_error(tmp_path, progress):
    """A script that calls train(workers=2) at top level: the spawned processes re-import it
    and die at start-up (multiprocessing's bootstrapping RuntimeError); the parent says why
    (the progress bar's manager process and the pool's workers fail in different places)."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(tests)!r})\n"
        "from helpers import SMALL, toy_2d\n"
        "from egmm import GMMDensity, LatentProjection, Observable, ObservableSpace, train\n"
        "x, th = toy_2d(50)\n"
        "space = ObservableSpace([Observable('a', 0.0, 1.0), Observable('b', 0.0, 1.0)])\n"
        "model = GMMDensity(space, ['c'], LatentProjection.fit(space, x), **SMALL)\n"
        f"train(model, x, th, workers=2, max_epochs=1, progress={progress})\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    assert "egmm.errors.EgmmError: workers > 1: a worker process died" in run.stderr
    assert 'if __name__ == "__main__":' in run.stderr
