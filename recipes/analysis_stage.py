"""The optional ``analysis`` stage: representations by layer and cos(v_EN, v_LOC) per layer.

On the recipe's model (the base model, no adapter) it runs the pieces of ``python -m evaluate.analysis``
for English plus the recipe's languages on the first ``analysis.n`` parallel FLORES devtest sentences:
``language_separation.csv/.png`` (silhouette by language, distance to the English centroid),
``retrieval.csv/.png`` (top-1 sentence retrieval L->en and en->L), ``pca_grid.png``.

From the steering stage's saved all-layer vectors (``vectors/``, :mod:`interventions.vector_io`) it
writes, for every language with both an EN-transfer and a LOC vector, ``vector_cosines.csv/.png``:
cos(v_EN[l], v_LOC[l]) at every layer against the 95% quantile of |cos| between random Gaussian
directions of the same dimension; and ``selected_cosines.csv``: the cosines at the layers the
steering stage applied (``steering.json``: the recipe's fixed layers, or with ``auto`` each vector's modal
cross-validated choice; an unsteered choice has no layer): EN's layer, LOC's layer, and the two applied
directions against each other. With ``auto`` the saved vectors are those of the protocol's primary run
(``cla`` when evaluated, recorded as ``vectors_model``), and the steering stage's ``cosines.json`` holds
the pre-registered sign-flip test of the same cosines.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .artifacts import SteeringResult

logger = logging.getLogger(__name__)

QUANTILE = 0.95


def vector_cosine_rows(vectors: dict, selection: dict, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(per-layer rows, selected-layer rows) for every language with ``en_transfer_<L>`` and ``loc_<L>``."""
    import torch

    from evaluate.analysis import random_cosine_baseline, vector_cosines

    per_layer, selected = [], []
    languages = sorted(name.removeprefix("loc_") for name in vectors if name.startswith("loc_")
                       and f"en_transfer_{name.removeprefix('loc_')}" in vectors)
    for lang in languages:
        v_en, v_loc = vectors[f"en_transfer_{lang}"], vectors[f"loc_{lang}"]
        if v_en.layers != v_loc.layers:
            raise ValueError(f"vectors of {lang}: EN layers {v_en.layers} differ from LOC layers {v_loc.layers}")
        rows = vector_cosines(v_en.vectors, v_loc.vectors, seed=seed, quantile=QUANTILE)
        for r in rows:
            r["layer"] = v_en.layers[r["layer"]]
        per_layer += [{"language": lang, **r} for r in rows]
        baseline = random_cosine_baseline(v_en.vectors.shape[1], quantile=QUANTILE, seed=seed)
        # a selection with layer None is unsteered (no cell gained on its selection data): no applied direction
        sel_en, sel_loc = ((sel if sel and sel.get("layer") is not None else None)
                           for sel in (selection.get(f"en_transfer_{lang}"), selection.get(f"loc_{lang}")))
        pairs = []
        if sel_en:
            pairs.append(("en_layer", sel_en["layer"], sel_en["layer"]))
        if sel_loc:
            pairs.append(("loc_layer", sel_loc["layer"], sel_loc["layer"]))
        if sel_en and sel_loc:
            pairs.append(("applied_pair", sel_en["layer"], sel_loc["layer"]))
        for which, l_en, l_loc in pairs:
            cos = float(torch.nn.functional.cosine_similarity(v_en.vector(l_en).double(),
                                                              v_loc.vector(l_loc).double(), dim=0))
            selected.append({"language": lang, "at": which, "en_layer": l_en, "loc_layer": l_loc, "cosine": cos,
                             "abs_cosine": abs(cos), f"random_abs_cos_q{round(QUANTILE * 100)}": baseline,
                             "above_random": abs(cos) > baseline})
    return per_layer, selected


def run_analysis(ctx, stage, out: Path) -> dict:
    from evaluate.analysis import (flores_representations, language_separation, layerwise_pca_grid,
                                   plot_by_layer, retrieval_by_layer)
    from evaluate.outputs import write_csv

    an = ctx.recipe.analysis
    langs = ["en"] + [x for x in ctx.recipe.evaluate.languages if x != "en"]
    ctx.seed()
    reps = flores_representations(ctx.model, ctx.tokenizer, langs, "devtest", an.n,
                                  batch_size=ctx.recipe.evaluate.batch_size)
    separation = language_separation(reps)
    retrieval = retrieval_by_layer(languages=langs, reps_by_lang=reps)
    write_csv(separation, out / "language_separation.csv")
    write_csv(retrieval, out / "retrieval.csv")
    layerwise_pca_grid(reps, out / "pca_grid.png", layers=an.layers, separation=separation)
    plot_by_layer(separation, ["silhouette", "distance_to_en_centroid"], out / "language_separation.png",
                  title="language separation (global-centred cosine)")
    plot_by_layer(retrieval, ["to_en", "from_en"], out / "retrieval.png", hue="language",
                  title=f"FLORES devtest top-1 retrieval (n={an.n}, mean-pooled, cosine)")
    files = ["language_separation.csv", "retrieval.csv", "pca_grid.png", "language_separation.png", "retrieval.png"]

    steering = ctx.output("steering")
    vectors_dir = steering / "vectors" if steering is not None else None
    cosines, selected, note = [], [], None
    info = SteeringResult.find(steering)
    vectors_model = (info.primary_run if info else None) or ctx.recipe.steering.compute_on
    if vectors_dir is None or not vectors_dir.is_dir():
        note = "no saved steering vectors (steering stage off or loaded from a directory): cosines not measured"
    else:
        from interventions.vector_io import load_vectors

        cosines, selected = vector_cosine_rows(load_vectors(vectors_dir), info.selection_dicts() if info else {},
                                               ctx.recipe.seed)
        if not cosines:
            note = "the steering stage saved no EN + LOC pair for any language: cosines not measured"
    if cosines:
        baseline = cosines[0][f"random_abs_cos_q{round(QUANTILE * 100)}"]
        write_csv(cosines, out / "vector_cosines.csv")
        plot_by_layer(cosines, ["cosine"], out / "vector_cosines.png", hue="language", baseline=baseline,
                      title=f"cos(v_EN, v_LOC) per layer; dashed: random |cos| q{round(QUANTILE * 100)}")
        files += ["vector_cosines.csv", "vector_cosines.png"]
    if selected:
        write_csv(selected, out / "selected_cosines.csv")
        files.append("selected_cosines.csv")
    if note:
        logger.warning("analysis: %s", note)
    summary = {"languages": langs, "n": an.n, "split": "devtest", "model": "base (no adapter)",
               "separation": separation, "retrieval": retrieval, "vector_cosines": cosines,
               "vectors_model": vectors_model if cosines else None,
               "selected_cosines": selected, "note": note, "files": files}
    (out / "analysis.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return {"files": files, "note": note}
