"""Observable / ObservableSpace: construction and the validation gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from egmm import InputError, Observable, ObservableSpace


@pytest.fixture
def space():
    return ObservableSpace([
        Observable("m", 100.0, 800.0, unit="GeV"),
        Observable("phi", -np.pi, np.pi),
        Observable("njet", 0, 5, discrete=True),
        Observable("z", -np.inf, np.inf),
    ])


def test_array_and_named_inputs_agree(space):
    arr = np.array([[150.0, 0.1, 2, -3.0], [700.0, -3.0, 0, 1e6]])
    cols = {"z": arr[:, 3], "njet": arr[:, 2], "m": arr[:, 0], "phi": arr[:, 1], "extra": [1, 2]}
    rec = np.rec.fromarrays(arr.T, names=["m", "phi", "njet", "z"])
    np.testing.assert_array_equal(space.validate(arr), arr)
    np.testing.assert_array_equal(space.validate(cols), arr)
    np.testing.assert_array_equal(space.validate(rec), arr)
    assert space.validate(arr).dtype == np.float64


def test_pandas_like_frame(space):
    class Frame:  # what validate relies on: .columns and [name]
        def __init__(self, d):
            self.d, self.columns = d, list(d)

        def __getitem__(self, k):
            return self.d[k]

    arr = np.array([[150.0, 0.1, 2, -3.0]])
    frame = Frame({n: arr[:, i] for i, n in enumerate(space.names)})
    np.testing.assert_array_equal(space.validate(frame), arr)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ([np.nan, 0.0, 1, 0.0], r"'m' is nan in row 1"),
        ([150.0, np.inf, 1, 0.0], r"'phi' is inf in row 1"),
        ([90.0, 0.0, 1, 0.0], r"'m' = 90.0 in row 1 lies outside"),
        ([150.0, 4.0, 1, 0.0], r"'phi' = 4.0 in row 1"),
        ([150.0, 0.0, 1.5, 0.0], r"discrete observable 'njet' = 1.5 in row 1"),
        ([150.0, 0.0, 6, 0.0], r"'njet' = 6.0 in row 1 lies outside"),
        ([150.0, 0.0, 1, -np.inf], r"'z' is -inf in row 1"),
    ],
)
def test_bad_values_name_observable_and_row(space, row, match):
    good = [150.0, 0.0, 1, 0.0]
    with pytest.raises(InputError, match=match):
        space.validate(np.array([good, row]))


def test_a_float32_value_at_a_bound_is_refused_with_a_hint():
    """A float32 column cut at x <= 0.3 holds float32(0.3) = 0.30000001192…: refused (no
    clamping), with the reason said (an audit of ROOT ntuple inputs)."""
    space = ObservableSpace([Observable("x", 0.0, 0.3)])
    x = np.array([0.1, 0.3], dtype=np.float32)
    with pytest.raises(InputError, match="bound rounded to float32"):
        space.validate(x)
    with pytest.raises(InputError, match=r"lies outside its bounds \[0.0, 0.3\]$"):
        space.validate(np.array([0.1, 0.31]))


def test_bad_shapes_and_columns(space):
    with pytest.raises(InputError, match="empty"):
        space.validate(np.zeros((0, 4)))
    with pytest.raises(InputError, match=r"expected shape \(N, 4\)"):
        space.validate(np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"missing columns \['z'\]"):
        space.validate({"m": [150.0], "phi": [0.0], "njet": [1]})
    with pytest.raises(InputError, match="different lengths"):
        space.validate({"m": [150.0], "phi": [0.0, 1.0], "njet": [1], "z": [0.0]})
    with pytest.raises(InputError, match="real numbers, got strings"):
        space.validate([["a", "b", "c", "d"]])
    # numbers written as strings, and complex numbers, are no events either (numpy parsed
    # "150" and dropped imaginary parts with a warning)
    with pytest.raises(InputError, match="real numbers, got strings"):
        space.validate([["150", "0", "1", "0"]])
    with pytest.raises(InputError, match="column 'm': expected real numbers, got strings"):
        space.validate({"m": np.array(["150"]), "phi": [0.0], "njet": [1], "z": [0.0]})
    with pytest.raises(InputError, match="complex"):
        space.validate(np.array([[150.0 + 1j, 0.0, 1.0, 0.0]]))


def test_observable_definition_errors():
    with pytest.raises(InputError, match="lo < hi"):
        Observable("x", 1.0, 1.0)
    with pytest.raises(InputError, match="finite bounds"):
        Observable("n", 0, np.inf, discrete=True)
    with pytest.raises(InputError, match="integer bounds"):
        Observable("n", 0, 2.5, discrete=True)
    with pytest.raises(InputError, match="f must lie"):
        Observable("x", 0, 1, f=1.5)
    with pytest.raises(InputError, match="duplicate"):
        ObservableSpace([Observable("x", 0, 1), Observable("x", 0, 2)])
    with pytest.raises(InputError, match="at least one"):
        ObservableSpace([])


def test_dict_round_trip_is_json_safe(space):
    d = json.loads(json.dumps(space.to_dict()))
    assert ObservableSpace.from_dict(d) == space
    assert space["m"].axis_label == "m [GeV]"
    assert space["njet"].n_categories == 6
    assert space.index("z") == 3
    with pytest.raises(InputError, match="no observable named"):
        space.index("w")


def test_single_observable_accepts_1d():
    sp = ObservableSpace([Observable("x", 0, 1)])
    assert sp.validate([0.1, 0.2]).shape == (2, 1)


def test_awkward_records_are_matched_by_name(space):
    """uproot's default output (an awkward record array) is read by field name in any order;
    a record without the space's names is refused, even with one field, and a jagged field
    is named."""
    ak = pytest.importorskip("awkward")
    arr = np.array([[150.0, 0.1, 2, -3.0], [700.0, -3.0, 0, 1e6]])
    fields = {n: arr[:, i] for i, n in enumerate(space.names)}
    reordered = ak.Array({k: fields[k] for k in ["z", "njet", "phi", "m"]} | {"pt": [1, 2]})
    np.testing.assert_array_equal(space.validate(reordered), arr)
    one = ObservableSpace([Observable("m", 0.0, 1000.0)])
    with pytest.raises(InputError, match=r"missing columns \['m'\]; got \['mjj'\]"):
        one.validate(ak.Array({"mjj": [150.0, 200.0]}))
    np.testing.assert_array_equal(one.validate(ak.Array({"m": [150.0, 200.0]})),
                                  [[150.0], [200.0]])
    with pytest.raises(InputError, match="column 'm' is not one number per event: a "
                                         "variable-length"):
        one.validate(ak.Array({"m": [[150.0], [200.0, 300.0]]}))
    # missing values by row; a record of no fields (uproot's arrays() with an alias that
    # names no branch) is a record missing the column, not an unreadable array
    with pytest.raises(InputError, match=r"'m' has missing \(None\) values, the first in "
                                         r"row 1"):
        one.validate(ak.Array({"m": [150.0, None, 300.0]}))
    with pytest.raises(InputError, match=r"missing columns \['m'\]; got \[\]"):
        one.validate(ak.Array([{}, {}]))
    np.testing.assert_array_equal(one.validate(ak.Array([150.0, 200.0])), [[150.0], [200.0]])
