"""Atomic writes (egmm._io): a failure mid-write leaves the previous file as it was."""

from __future__ import annotations

import pytest

from egmm._io import savefig_atomic, write_text_atomic


class _FailingFigure:
    """Writes half a file, then fails, as a crash inside an image encoder would."""

    def savefig(self, path, format=None, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("encoder failed")


class _Figure:
    def savefig(self, path, format=None, **kwargs):
        with open(path, "w") as fh:
            fh.write(f"{format} {kwargs}")


def test_failed_writes_leave_the_old_file(tmp_path):
    png = tmp_path / "plot.png"
    savefig_atomic(_Figure(), png, dpi=50)
    assert png.read_text() == "png {'dpi': 50}"  # the format from the final name
    with pytest.raises(RuntimeError, match="encoder failed"):
        savefig_atomic(_FailingFigure(), png)
    assert png.read_text() == "png {'dpi': 50}"
    table = tmp_path / "table.md"
    write_text_atomic(table, "good\n")
    with pytest.raises(TypeError):
        write_text_atomic(table, None)
    assert table.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "table.md"]  # no temps


def test_a_real_figure_is_written_as_png(tmp_path):
    import numpy as np

    from egmm.validation import plots

    pits = {"c = 0": np.random.default_rng(0).uniform(size=(90, 2))}
    fig = plots.plot_pit(pits, ["a", "b"], path=tmp_path / "pit.png")
    assert fig is not None
    assert (tmp_path / "pit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
