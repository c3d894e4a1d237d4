"""Representation analyses: constructed data with known answers, plots written, one gemma smoke test."""

from __future__ import annotations

import pytest
import torch

from evaluate import analysis as A
from evaluate.outputs import write_csv


def test_retrieval_top1_constructed():
    torch.manual_seed(0)
    tgt = torch.randn(50, 16)
    assert A.retrieval_top1(tgt + 0.01 * torch.randn(50, 16), tgt) == 1.0
    shuffled = tgt[torch.roll(torch.arange(50), 1)]
    assert A.retrieval_top1(shuffled, tgt) == 0.0
    half = tgt.clone()
    half[:25] = tgt[torch.arange(25).roll(1)]  # first 25 rows point at a neighbour
    assert A.retrieval_top1(half, tgt) == pytest.approx(0.5)
    # cosine, not dot product: scaling a row does not change the answer
    assert A.retrieval_top1(tgt * torch.rand(50, 1) * 100, tgt) == 1.0
    with pytest.raises(ValueError, match="src, tgt"):
        A.retrieval_top1(tgt, tgt[:10])


def _reps(offsets, n=30, hidden=8, layers=3, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(layers, n, hidden, generator=g)  # shared "meaning" (parallel rows)
    return {lang: base + off + noise * torch.randn(layers, n, hidden, generator=g) for lang, off in offsets.items()}


def test_silhouette_matches_definition():
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    d = torch.cdist(x.double(), x.double())
    ref = []
    for i in range(12):
        same = (labels == labels[i]) & (torch.arange(12) != i)
        a = d[i, same].mean()
        b = min(d[i, labels == g].mean() for g in labels.unique() if g != labels[i])
        ref.append((b - a) / max(a, b))
    assert A.silhouette(x, labels, metric="euclidean") == pytest.approx(float(torch.stack(ref).mean()), abs=1e-9)


def test_language_separation_orders_separable_and_mixed():
    sep_vec = torch.zeros(8)
    sep_vec[0] = 20.0
    separated = A.language_separation(_reps({"en": 0.0, "ko": sep_vec, "zh": -sep_vec}))
    mixed = A.language_separation(_reps({"en": 0.0, "ko": 0.0, "zh": 0.0}))
    assert len(separated) == 3 and set(separated[0]) >= {"layer", "silhouette", "distance_to_en_centroid"}
    for s, m in zip(separated, mixed):
        assert s["silhouette"] > 0.5 > abs(m["silhouette"])
        assert s["distance_to_en_centroid"] > m["distance_to_en_centroid"]
    with pytest.raises(ValueError, match="pivot"):
        A.language_separation(_reps({"ko": 0.0, "zh": 0.0}))


def test_retrieval_by_layer_on_reps():
    reps = _reps({"en": 0.0, "ko": 0.1}, noise=0.01)
    reps["ko"][2] = torch.randn(30, 8)  # layer 2 carries no shared meaning
    rows = A.retrieval_by_layer(languages=["en", "ko"], reps_by_lang=reps)
    assert [(r["layer"], r["language"]) for r in rows] == [(0, "ko"), (1, "ko"), (2, "ko")]
    assert rows[0]["to_en"] == rows[0]["from_en"] == 1.0
    assert rows[2]["to_en"] < 0.5
    centred = A.retrieval_by_layer(languages=["en", "ko"], reps_by_lang=reps, center="language")
    assert centred[0]["to_en"] == 1.0
    with pytest.raises(ValueError, match="model and tokenizer"):
        A.retrieval_by_layer(languages=["ko"])


def test_vector_cosines_and_random_baseline():
    torch.manual_seed(0)
    v_en = torch.randn(4, 640)
    v_loc = torch.randn(4, 640)
    v_loc[1] = v_en[1] + 0.1 * torch.randn(640)
    v_loc[3] = -v_en[3]
    rows = A.vector_cosines(v_en, v_loc)
    base = rows[0]["random_abs_cos_q95"]
    assert base == pytest.approx(1.96 / 640 ** 0.5, rel=0.1)  # |cos| ~ N(0, 1/d)
    assert rows[1]["cosine"] > 0.9 and rows[1]["above_random"]
    assert rows[3]["cosine"] == pytest.approx(-1.0) and rows[3]["above_random"]
    with pytest.raises(ValueError, match="v_en, v_loc"):
        A.vector_cosines(v_en, v_loc[:2])


def test_plots_and_csv(tmp_path):
    reps = _reps({"en": 0.0, "ko": 3.0, "zh": -3.0}, layers=4)
    sep = A.language_separation(reps)
    grid = A.layerwise_pca_grid(reps, tmp_path / "grid.png", ncols=3, separation=sep)
    line = A.plot_by_layer(sep, ["silhouette"], tmp_path / "sep.png")
    table = write_csv(sep, tmp_path / "sep.csv")
    assert grid.stat().st_size > 1000 and line.stat().st_size > 1000
    assert table.read_text().splitlines()[0].startswith("layer,silhouette")
    with pytest.raises(ValueError, match="reps_by_lang"):
        A.layerwise_pca_grid({}, tmp_path / "x.png")


@pytest.mark.gemma
def test_gemma_flores_smoke(gemma):
    model, tok = gemma
    reps = A.flores_representations(model, tok, ["en", "es"], n=12, batch_size=6, progress=False)
    assert reps["en"].shape == (18, 12, 640)
    rows = A.retrieval_by_layer(languages=["en", "es"], reps_by_lang=reps)
    assert len(rows) == 18 and all(0.0 <= r["to_en"] <= 1.0 for r in rows)
    assert max(r["to_en"] for r in rows) > 0.5  # es<->en parallel sentences are retrievable somewhere
