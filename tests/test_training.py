"""train(): learning, early stopping, weights, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egmm import (
    GMMDensity,
    InputError,
    LatentProjection,
    ModelFileError,
    Observable,
    ObservableSpace,
    ParameterError,
    train,
)
from egmm.training import TrainingHistory
from helpers import SMALL, toy_2d, toy_2d_scores


def _model(x, seed=0):
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    proj = LatentProjection.fit(space, x)
    torch.manual_seed(seed)
    return GMMDensity(space, ["c"], proj, **SMALL)


def test_training_lowers_validation_loss_and_sets_bounds():
    x, th = toy_2d()
    model = _model(x)
    hist = train(model, x, th, max_epochs=4, batch_size=100, progress=False)
    assert isinstance(hist, TrainingHistory)
    assert model.parameter_bounds == {"c": (-1.0, 1.0)}
    assert len(hist.epochs) == 4 and len(hist.val_loss[0]) == 2
    first, best = np.sum(hist.val_loss[0]), hist.total_best_val_loss
    assert best < first
    assert hist.to_dict()["observables"] == ["a", "b"]
    # weights require gradients only inside train(): a θ gradient afterwards (as in a fit)
    # leaves them untouched
    assert not any(p.requires_grad for p in model.module.parameters())
    theta = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    model.log_prob_tensor(torch.as_tensor(x[:50]), theta).sum().backward()
    assert theta.grad is not None
    assert all(p.grad is None for p in model.module.parameters())


@pytest.mark.filterwarnings("ignore:.*validation loss not finite:RuntimeWarning")
def test_early_stopping_and_restore_best():
    x, th = toy_2d(200)
    model = _model(x)
    # a huge learning rate makes the validation loss stall quickly (whether a network also
    # diverges depends on the CPU's rounding: Intel Xeon yes, AMD EPYC no)
    hist = train(model, x, th, max_epochs=60, batch_size=50, lr=0.05, patience=2,
                 lr_patience=100, progress=False)
    assert hist.stopped and len(hist.epochs) < 60
    # restored weights reproduce the best validation loss
    for i, e in enumerate(hist.best_epoch):
        assert hist.val_loss[e][i] == pytest.approx(hist.best_val_loss[i])


def test_a_diverging_network_is_said_and_its_best_epoch_restored():
    """Network 1's weights turned to NaN after epoch 1 (as a diverging training does, here on
    every CPU alike): its validation loss is not finite from epoch 2, train() says so, stops
    it after ``patience`` epochs and restores epoch 1's weights."""
    x, th = toy_2d(200)
    model = _model(x)

    def diverge(epoch, _history):
        if epoch == 1:
            with torch.no_grad():
                for p in model.nets[1].parameters():
                    p.fill_(float("nan"))

    with pytest.warns(RuntimeWarning, match=r"network 1 \('b'\): validation loss not finite "
                                            r"from epoch 2 on .*restored epoch 1"):
        hist = train(model, x, th, max_epochs=6, batch_size=50, patience=2, lr_patience=100,
                     progress=False, callback=diverge)
    assert hist.best_epoch[1] == 1 and np.isnan(hist.val_loss[2][1])
    assert hist.active[2][1] and not hist.active[3][1]  # stopped after epochs 2 and 3
    assert all(torch.isfinite(p).all() for p in model.nets[1].parameters())
    assert float(model.log_prob(x[:20], np.full((20, 1), 0.5)).sum()) > -np.inf


def test_negative_weights_supported_and_zero_total_rejected():
    x, th = toy_2d(100)
    w = np.ones(len(x))
    w[::10] = -0.2
    hist = train(_model(x), x, th, weights=w, max_epochs=1, progress=False)
    assert np.isfinite(hist.val_loss[0]).all()
    with pytest.raises(InputError, match="total weight"):
        train(_model(x), x, th, weights=np.zeros(len(x)), progress=False)
    with pytest.raises(InputError, match="not finite"):
        train(_model(x), x, th, weights=np.where(np.arange(len(x)) == 3, np.nan, 1.0),
              progress=False)
    # weights whose sum overflows had become 0 after normalising: nothing was learnt
    with pytest.raises(InputError, match="overflows"):
        train(_model(x), x, th, weights=np.full(len(x), 1e308), progress=False)
    # signed weights that nearly cancel are said; a validation part of total weight ≤ 0
    # gives no likelihood to stop on
    cancel = np.where(np.arange(len(x)) % 2 == 0, 1.0, -1.0)
    cancel[0] += 1e-2
    with pytest.warns(UserWarning, match="nearly cancel"), \
            pytest.raises(InputError, match="validation events"):
        train(_model(x), x, th, weights=cancel, max_epochs=1, progress=False)


def test_resume_gives_identical_weights(tmp_path):
    x, th = toy_2d(200)
    kwargs = {"max_epochs": 4, "batch_size": 64, "progress": False, "seed": 3}
    ref = _model(x)
    train(ref, x, th, **kwargs)

    ckpt = tmp_path / "run.ckpt"

    def interrupt(epoch, _history):
        if epoch == 1:
            raise KeyboardInterrupt

    killed = _model(x)
    with pytest.raises(KeyboardInterrupt):
        train(killed, x, th, checkpoint=ckpt, callback=interrupt, **kwargs)
    resumed = _model(x, seed=123)  # different init: everything must come from the checkpoint
    hist = train(resumed, x, th, checkpoint=ckpt, resume=True, **kwargs)
    assert hist.epochs == [0, 1, 2, 3]
    for a, b in zip(ref.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)
    # a checkpoint of another training is refused
    with pytest.raises(ModelFileError, match="another training"):
        train(_model(x), x, th, checkpoint=ckpt, resume=True, max_epochs=4, batch_size=32,
              progress=False)
    # ... so is one of the same data trained with another learning rate, or of other data
    # with the same sums (two events swapped between θ points)
    with pytest.raises(ModelFileError, match=r"another training \(this call's lr: not"):
        train(_model(x), x, th, checkpoint=ckpt, resume=True, **{**kwargs, "lr": 2e-3})
    swapped = th.copy()
    i, j = 0, int(np.argmax(th[:, 0] != th[0, 0]))
    swapped[[i, j]] = swapped[[j, i]]
    assert swapped.sum() == th.sum() and not np.array_equal(swapped, th)
    with pytest.raises(ModelFileError, match="another training"):
        train(_model(x), x, swapped, checkpoint=ckpt, resume=True, **kwargs)
    # ... and one of a model with weights of the same sizes but another activation or
    # projection (before, only the sizes were compared: it resumed into the wrong model)
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    for other in (GMMDensity(space, ["c"], LatentProjection.fit(space, x), activation="silu",
                             **SMALL),
                  GMMDensity(space, ["c"], LatentProjection.fit(space, x, f=0.3), **SMALL)):
        assert [p.numel() for p in other.module.parameters()] == [
            p.numel() for p in ref.module.parameters()]
        with pytest.raises(ModelFileError, match="another training"):
            train(other, x, th, checkpoint=ckpt, resume=True, **kwargs)
    # a checkpoint of an older format says so
    old = torch.load(ckpt, weights_only=True)
    old["version"] = 2
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ModelFileError, match="older egmm"):
        train(_model(x), x, th, checkpoint=tmp_path / "old.ckpt", resume=True, **kwargs)
    old["version"] = 99
    torch.save(old, tmp_path / "newer.ckpt")
    with pytest.raises(ModelFileError, match="newer egmm"):
        train(_model(x), x, th, checkpoint=tmp_path / "newer.ckpt", resume=True, **kwargs)
    # files that are no checkpoints, or damaged ones, are refused by name (were
    # AttributeError / KeyError)
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ModelFileError, match="not an egmm training checkpoint"):
        train(_model(x), x, th, checkpoint=tmp_path / "list.ckpt", resume=True, **kwargs)
    damaged = torch.load(ckpt, weights_only=True)
    del damaged["state"], damaged["sha256"]  # (a checkpoint of before the checksums)
    torch.save(damaged, tmp_path / "nostate.ckpt")
    with pytest.raises(ModelFileError, match="damaged checkpoint"):
        train(_model(x), x, th, checkpoint=tmp_path / "nostate.ckpt", resume=True, **kwargs)
    # one changed weight that still reads is caught by the checksum (it had resumed)
    flipped = torch.load(ckpt, weights_only=True)
    weight = next(iter(flipped["module"].values()))
    weight.view(-1)[0] += 1e-3
    torch.save(flipped, tmp_path / "flipped.ckpt")
    with pytest.raises(ModelFileError, match="does not match the checksum"):
        train(_model(x), x, th, checkpoint=tmp_path / "flipped.ckpt", resume=True, **kwargs)
    # a checkpoint without a checksum (older egmm) still resumes, to the same weights
    unchecked = torch.load(ckpt, weights_only=True)
    del unchecked["sha256"]
    torch.save(unchecked, tmp_path / "unchecked.ckpt")
    again = _model(x, seed=7)
    train(again, x, th, checkpoint=tmp_path / "unchecked.ckpt", resume=True, **kwargs)
    for a, b in zip(again.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)
    # the validation loss depends on eval_batch_size (rounding), so a resume must keep it
    with pytest.raises(ModelFileError, match="eval_batch_size"):
        train(_model(x), x, th, checkpoint=ckpt, resume=True, **kwargs, eval_batch_size=7)


def test_bad_training_input():
    x, th = toy_2d(50)
    with pytest.raises(InputError, match="shape"):
        train(_model(x), x, th[:-1], progress=False)
    with pytest.raises(ParameterError, match="not finite"):
        train(_model(x), x, np.where(np.arange(len(x))[:, None] == 2, np.inf, th),
              progress=False)
    with pytest.raises(InputError, match="validation"):
        train(_model(x), x, th, validation=1.0, progress=False)
    for lr in (0.0, -1e-3, float("nan")):  # a rate that cannot train is an error, not a no-op
        with pytest.raises(InputError, match="lr must be"):
            train(_model(x), x, th, lr=lr, progress=False)
    bad = x.copy()
    bad[5, 1] = 2.0
    with pytest.raises(InputError, match="'b'"):
        train(_model(x), bad, th, progress=False)
    # settings that would train nothing or silently misbehave: min_delta = nan never counts an
    # improvement (the untrained weights came back), eval_batch_size < 1 made every
    # validation loss 0, lr_factor ≤ 0 zeroed the rate, fractional counts were truncated
    with pytest.raises(InputError, match="resume=True needs checkpoint="):  # was a fresh start
        train(_model(x), x, th, resume=True, progress=False)
    for kwargs, name in (({"min_delta": float("nan")}, "min_delta"),
                         ({"min_delta": -1e-3}, "min_delta"),
                         ({"eval_batch_size": -1}, "eval_batch_size"),
                         ({"lr_factor": 0.0}, "lr_factor"), ({"lr_factor": -1.0}, "lr_factor"),
                         ({"lr_factor": float("nan")}, "lr_factor"),
                         ({"lr_factor": 1.5}, "lr_factor"),
                         ({"lr_patience": -1}, "lr_patience"),
                         ({"max_epochs": 2.5}, "max_epochs"),
                         ({"batch_size": 100.5}, "batch_size"), ({"patience": 0}, "patience"),
                         ({"validation": "0.3"}, "validation"),
                         # checked before training, not by torch after data preparation
                         ({"seed": 1.5}, "seed"), ({"seed": -1}, "seed"),
                         ({"dtype": torch.float16}, "dtype"), ({"dtype": torch.int32}, "dtype"),
                         ({"device": "cuda:0" if not torch.cuda.is_available() else "nope"},
                          "device"),
                         ({"checkpoint": "/no/such/folder/run.ckpt"}, "folder")):
        with pytest.raises(InputError, match=name):
            train(_model(x), x, th, progress=False, **kwargs)


def test_training_theta_as_a_mapping():
    """θ as name -> per-event values (or a scalar) trains exactly as the (N, P) array; a
    mapping with a wrong name or length, or a θ that is no array, is refused by name."""
    x, th = toy_2d(100)
    kwargs = {"max_epochs": 2, "batch_size": 50, "progress": False, "seed": 1}
    ref, by_name = _model(x), _model(x)
    h_ref = train(ref, x, th, **kwargs)
    h = train(by_name, x, {"c": th[:, 0]}, **kwargs)
    assert h.val_loss == h_ref.val_loss
    for a, b in zip(ref.module.state_dict().values(), by_name.module.state_dict().values()):
        assert torch.equal(a, b)
    train(_model(x), x, {"c": 0.5}, **kwargs)  # one point for all events
    with pytest.raises(ParameterError, match="unknown"):
        train(_model(x), x, {"c": th[:, 0], "d": 1.0}, progress=False)
    with pytest.raises(ParameterError, match="parameter 'c': expected a scalar or 300 values"):
        train(_model(x), x, {"c": th[:-1, 0]}, progress=False)
    with pytest.raises(InputError, match="training θ: expected an"):
        train(_model(x), x, object(), progress=False)


def test_cosine_schedule_follows_half_cosine_and_resumes(tmp_path):
    x, th = toy_2d(200)
    kwargs = {"max_epochs": 4, "batch_size": 64, "progress": False, "seed": 3,
              "schedule": "cosine", "lr": 2e-3, "patience": 100}
    ref = _model(x)
    hist = train(ref, x, th, **kwargs)
    # 120 training events in batches of 64: 2 steps per epoch, 8 in all; after epoch e the
    # rate is lr·(1 + cos(π·2(e+1)/8))/2, reaching 0 at the end of the budget
    steps = np.arange(1, 5) * 2
    expected = 2e-3 * (1 + np.cos(np.pi * steps / 8)) / 2
    np.testing.assert_allclose(np.array(hist.lr)[:, 0], expected, atol=1e-12)
    np.testing.assert_allclose(np.array(hist.lr)[:, 1], expected, atol=1e-12)
    assert hist.total_best_val_loss < np.sum(hist.val_loss[0])

    ckpt = tmp_path / "cos.ckpt"

    def interrupt(epoch, _history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_model(x), x, th, checkpoint=ckpt, callback=interrupt, **kwargs)
    resumed = _model(x, seed=123)
    train(resumed, x, th, checkpoint=ckpt, resume=True, **kwargs)
    for a, b in zip(ref.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)
    # the budget is part of a cosine run: another max_epochs, or the plateau schedule, is
    # another training
    for other in ({"max_epochs": 6}, {"schedule": "plateau"}):
        with pytest.raises(ModelFileError, match="another training"):
            train(_model(x), x, th, checkpoint=ckpt, resume=True, **{**kwargs, **other})


def test_bad_schedule():
    x, th = toy_2d(50)
    with pytest.raises(InputError, match="schedule must be one of"):
        train(_model(x), x, th, schedule="linear", progress=False)
    with pytest.raises(InputError, match="max_epochs"):
        train(_model(x), x, th, schedule="cosine", max_epochs=0, progress=False)


# -- score regression ---------------------------------------------------------------------------
def testtoy_2d_scores_are_the_derivatives_of_its_density():
    x, th = toy_2d(200)
    a, c, h = x[:, 0], th[:, 0], 1e-6

    def log_p0(cc):
        return np.log(cc / -np.expm1(-cc)) - cc * a

    fd = (log_p0(c + h + 1e-9) - log_p0(c - h + 1e-9)) / (2 * h)  # (no 0/0 at c = 0)
    np.testing.assert_allclose(toy_2d_scores(x, th)[:, 0, 0], fd, atol=1e-6)


def test_score_term_is_the_models_theta_gradient_against_the_targets():
    # history.val_score is Σ_p E[(∂_p log p_i − t_ip)²]/I_p over the validation split, with the
    # model's score in the parameters' own units; recomputed here through the data-space path
    # (log_prob_latent_per_observable, float64 autograd) for a model that training leaves
    # unchanged (lr 1e-12)
    x, th = toy_2d(300)
    t = toy_2d_scores(x, th)
    model = _model(x)
    hist = train(model, x, th, score=t, max_epochs=1, batch_size=100, lr=1e-12, seed=5,
                 validation=0.3, progress=False)
    n_val = round(0.3 * len(x))
    val = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))[:n_val].numpy()
    u = model.projection.forward(torch.as_tensor(x[val]))
    c = torch.as_tensor(th[val], dtype=torch.float64).requires_grad_(True)
    lp = model.log_prob_latent_per_observable(u, c)
    s = np.stack([torch.autograd.grad(lp[:, i].sum(), c, retain_graph=True)[0].numpy()
                  for i in range(2)], 1)
    info = (t.sum(1) ** 2).mean(0)
    expected = (((s - t[val]) ** 2) / info).sum(2).mean(0)
    assert expected[0] > 0.01 and expected[1] > 1e-4  # (an untrained model: far from it)
    np.testing.assert_allclose(hist.val_score[0], expected, rtol=2e-3)
    # and the NLL history is unchanged in meaning: the restored epoch's NLL
    assert hist.best_val_loss == hist.val_loss[0]


def test_score_training_learns_the_theta_dependence():
    # the same seeds, batches and split, with the score term weighted 1 or 0 (the term is
    # measured either way): regressing on the scores cuts the part of the information the
    # θ-dependence gets wrong (here from 1.9 to 0.04 for a; b | a, whose clipped edges are
    # point masses, picks up a θ-dependence of thousands of times the information without)
    x, th = toy_2d(600)
    t = toy_2d_scores(x, th)
    final = {}
    for weight in (0.0, 1.0):
        hist = train(_model(x), x, th, score=t, score_weight=weight, max_epochs=15,
                     batch_size=50, lr=3e-3, schedule="cosine", seed=2, progress=False)
        final[weight] = np.array(hist.val_score[-1])
        assert np.isfinite(hist.val_loss).all()  # (twice-differentiated mixtures stay finite)
    assert final[1.0][0] < 0.2 * final[0.0][0], final
    assert final[1.0][1] < 0.2 * final[0.0][1], final


def test_score_resume_and_bad_scores(tmp_path):
    x, th = toy_2d(100)
    t = toy_2d_scores(x, th)
    ckpt = tmp_path / "run.ckpt"
    kwargs = {"max_epochs": 1, "batch_size": 64, "progress": False}
    train(_model(x), x, th, score=t, checkpoint=ckpt, **kwargs)
    with pytest.raises(ModelFileError, match="another training"):  # other targets
        train(_model(x), x, th, score=2 * t, checkpoint=ckpt, resume=True, **kwargs)
    with pytest.raises(ModelFileError, match="another training"):  # another weight
        train(_model(x), x, th, score=t, score_weight=0.5, checkpoint=ckpt, resume=True,
              **kwargs)
    with pytest.raises(InputError, match=r"score: expected shape \(300, 2, 1\)"):
        train(_model(x), x, th, score=t.sum(1), **kwargs)  # a joint score for the GMM
    bad = t.copy()
    bad[7, 0, 0] = np.nan
    with pytest.raises(InputError, match="score: not finite in row 7"):
        train(_model(x), x, th, score=bad, **kwargs)
    with pytest.raises(InputError, match="information about 'c'"):
        train(_model(x), x, th, score=np.zeros_like(t), **kwargs)
    for weight in (-1.0, float("inf")):
        with pytest.raises(InputError, match="score_weight"):
            train(_model(x), x, th, score=t, score_weight=weight, **kwargs)


def test_a_loss_that_is_never_finite_is_an_error_and_a_diverging_one_a_warning(monkeypatch):
    # NaN never improves on the best loss: from the first epoch on, the initial weights would
    # be restored without a word (an error); after finite epochs, the best of them is (a
    # warning)
    from egmm import TrainingError

    x, th = toy_2d(100)  # 180 training events: 4 batches of 50 and one validation call

    def breaking(finite_calls):
        model = _model(x)
        real, calls = model.training_log_prob, [0]

        def broken(i, batch):
            out = real(i, batch)
            if i == 1:
                calls[0] += 1
                if calls[0] > finite_calls:
                    return out * torch.nan
            return out

        monkeypatch.setattr(model, "training_log_prob", broken)
        return model

    with pytest.raises(TrainingError, match=r"network 1 \('b'\): validation loss nan after "
                                            r"epoch 0, and none before it was finite"):
        train(breaking(0), x, th, max_epochs=2, batch_size=50, progress=False)
    with pytest.warns(RuntimeWarning, match=r"network 1 \('b'\): validation loss not finite "
                                            r"from epoch 1 on .* restored epoch 0"):
        hist = train(breaking(5), x, th, max_epochs=2, batch_size=50, progress=False)
    assert hist.best_epoch[1] == 0 and np.isfinite(hist.best_val_loss[1])
