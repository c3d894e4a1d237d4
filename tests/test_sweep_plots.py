"""plot_sweep: a PNG for one or several vectors, None gains, a single cell, and refused rows."""

from __future__ import annotations

import pytest

from evaluate.sweep_plots import plot_sweep

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(vector="en_transfer_ko", layers=(3, 6, 9), coefficients=(2.0, 4.0, 8.0), relative=False,
          localization=True):
    rows = []
    for layer in layers:
        for k, c in enumerate(coefficients):
            t = 0.05 * k - 0.01 * layer
            loc = -0.02 * k if localization else None
            rows.append({"vector": vector, "layer": layer, "coefficient": c * (1 + layer / 10) if relative else c,
                         "alpha": c if relative else None, "transfer_score": 0.5 + t,
                         "localization_score": None if loc is None else 0.4 + loc, "transfer_gain": t,
                         "localization_gain": loc, "base_transfer_score": 0.5,
                         "base_localization_score": 0.4 if localization else None})
    return rows


def _png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    return data


def test_plot_sweep_writes_a_png_for_several_vectors(tmp_path):
    rows = _rows() + _rows("loc_ko", relative=True, localization=False)  # second vector: no localization items
    out = plot_sweep(rows, tmp_path / "figs" / "sweep.png")
    assert out == tmp_path / "figs" / "sweep.png"
    one = _png(out)
    assert len(_png(plot_sweep(_rows(), tmp_path / "one.png"))) < len(one)  # one facet row, smaller figure


def test_plot_sweep_single_cell_and_all_none(tmp_path):
    _png(plot_sweep(_rows(layers=(12,), coefficients=(4.0,)), tmp_path / "cell.png"))
    rows = _rows(layers=(12,), coefficients=(4.0,), localization=False)
    for r in rows:
        r["transfer_gain"] = None
    _png(plot_sweep(rows, tmp_path / "none.png"))


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty list"),
    ([{"vector": "v", "layer": 1, "coefficient": 2.0, "transfer_gain": 0.1}], r"rows\[0\].*localization_gain"),
    (_rows()[:2] + [{"layer": 1}], r"rows\[2\]: missing key"),
    (["not a row"], r"rows\[0\]: expected a dict"),
])
def test_plot_sweep_refuses_rows_without_the_needed_keys(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        plot_sweep(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
