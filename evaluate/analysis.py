"""Representation analyses (the paper's figures, rebuilt and quantified).

* :func:`layerwise_pca_grid` -- PCA of parallel FLORES sentence representations per layer, coloured by
  language, one panel per layer; quantified by :func:`language_separation` (silhouette by language and
  mean cosine distance to the English centroid, per layer).
* :func:`vector_cosines` -- cos(v_EN, v_LOC) per layer against the |cos| of random Gaussian directions
  of the same dimension.
* :func:`retrieval_by_layer` -- cross-lingual sentence retrieval (mean-pooled without ``<bos>``, cosine,
  :func:`evaluate.retrieval.retrieval_top1`) per layer, L->en and en->L.

Run everything on a model: ``python -m evaluate.analysis --languages en,ar,es,id,ko,zh --n 200``.
Representations are ``block_output`` of every decoder layer, mean-pooled over real tokens
(:func:`interventions.vectors.sentence_representations`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import torch

from evaluate.outputs import write_csv
from evaluate.retrieval import retrieval_top1  # the project's one retrieval helper

Reps = Mapping[str, torch.Tensor]  # language -> Tensor[n_layers, n, hidden], parallel rows


def _check_reps(reps_by_lang: Reps) -> tuple[int, int]:
    if not reps_by_lang:
        raise ValueError("reps_by_lang: expected at least one language")
    shapes = {lang: tuple(r.shape) for lang, r in reps_by_lang.items()}
    first = next(iter(shapes.values()))
    if any(len(s) != 3 or s[0] != first[0] or s[2] != first[2] for s in shapes.values()):
        raise ValueError(f"reps_by_lang: expected Tensor[n_layers, n, hidden] of one shape family, got {shapes}")
    return first[0], first[2]


def flores_representations(model, tokenizer, languages: Sequence[str], split: str = "devtest", n: int | None = None,
                           layers: Sequence[int] | None = None, pooling: str = "mean", batch_size: int = 16,
                           progress: bool = True) -> dict[str, torch.Tensor]:
    """Sentence representations of the first ``n`` parallel FLORES sentences per language."""
    from evaluate.loaders import load_flores
    from interventions.vectors import sentence_representations

    return {lang: sentence_representations(model, tokenizer, load_flores(lang, split)[:n], layers=layers,
                                           pooling=pooling, batch_size=batch_size, progress=progress)
            for lang in languages}


def _centre(x: torch.Tensor, how: str | None, labels: torch.Tensor | None = None) -> torch.Tensor:
    if how in (None, "none"):
        return x
    if how == "global":
        return x - x.mean(0, keepdim=True)
    if how == "language":
        out = x.clone()
        for g in labels.unique():
            out[labels == g] -= x[labels == g].mean(0)
        return out
    raise ValueError(f"center: expected 'none', 'global' or 'language', got {how!r}")


def silhouette(x: torch.Tensor, labels: torch.Tensor, metric: str = "cosine") -> float:
    """Mean silhouette coefficient of points ``x[n, d]`` with integer ``labels[n]`` (cosine or euclidean)."""
    if metric == "cosine":
        xn = torch.nn.functional.normalize(x.double(), dim=-1)
        dist = (1 - xn @ xn.T).clamp(min=0)
    elif metric == "euclidean":
        dist = torch.cdist(x.double(), x.double())
    else:
        raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
    groups = labels.unique()
    if len(groups) < 2:
        raise ValueError("labels: silhouette needs at least two groups")
    idx = (labels[:, None] == groups[None, :]).long().argmax(1)  # group index of each point
    onehot = torch.nn.functional.one_hot(idx, len(groups)).double()  # [n, k]
    sizes = onehot.sum(0)
    sums = dist @ onehot  # [n, k] summed distance to each group
    rows = torch.arange(len(x))
    own_size = sizes[idx]
    a = sums[rows, idx] / (own_size - 1).clamp(min=1)
    mean_other = sums / sizes
    mean_other[rows, idx] = math.inf
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b)
    s[own_size == 1] = 0.0  # singleton clusters score 0
    return float(s.mean())


def language_separation(reps_by_lang: Reps, pivot: str = "en", center: str = "global") -> list[dict]:
    """Per layer: silhouette by language (cosine) and the distance to the English centroid.

    ``distance_<lang>`` is the mean Euclidean distance of that language's sentences to the ``pivot``
    centroid divided by the mean distance of the pivot's own sentences to it (scale-free across layers:
    1 means "as close as English sentences are"); ``distance_to_en_centroid`` averages it over the
    other languages. ``center="global"`` subtracts the all-language mean before the cosine silhouette
    (the residual stream shares a large common offset that otherwise makes every cosine near 1).
    """
    n_layers, _ = _check_reps(reps_by_lang)
    if pivot not in reps_by_lang:
        raise ValueError(f"pivot: {pivot!r} is not among the languages {list(reps_by_lang)}")
    langs = list(reps_by_lang)
    labels = torch.cat([torch.full((reps_by_lang[l].shape[1],), i) for i, l in enumerate(langs)])
    rows = []
    for layer in range(n_layers):
        x = _centre(torch.cat([reps_by_lang[l][layer] for l in langs]).double(), center)
        row = {"layer": layer, "silhouette": silhouette(x, labels) if len(langs) > 1 else float("nan")}
        en = x[labels == langs.index(pivot)]
        centroid = en.mean(0)
        spread = (en - centroid).norm(dim=-1).mean()  # English sentences' own distance to their centroid
        dists = {l: float((x[labels == i] - centroid).norm(dim=-1).mean() / spread) for i, l in enumerate(langs)}
        others = [d for l, d in dists.items() if l != pivot]
        row["distance_to_en_centroid"] = sum(others) / len(others) if others else float("nan")
        row.update({f"distance_{l}": d for l, d in dists.items()})
        rows.append(row)
    return rows


def _pca2(x: torch.Tensor) -> torch.Tensor:
    xc = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return (xc @ vh[:2].T).float()


def _save(fig, path: str | Path) -> Path:
    """Tight layout, write ``path`` (parents created) at 120 dpi, close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def layerwise_pca_grid(reps_by_lang: Reps, path: str | Path, layers: Sequence[int] | None = None,
                       ncols: int = 6, separation: list[dict] | None = None) -> Path:
    """One PCA scatter panel per layer (points coloured by language), saved to ``path`` (png/pdf)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    n_layers, _ = _check_reps(reps_by_lang)
    layers = list(range(n_layers)) if layers is None else list(layers)
    langs = list(reps_by_lang)
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    palette = dict(zip(langs, sns.color_palette("tab10", len(langs))))
    sil = {r["layer"]: r["silhouette"] for r in separation or []}
    for ax, layer in zip(axes.flat, layers):
        pts = _pca2(torch.cat([reps_by_lang[l][layer] for l in langs]))
        hue = [l for l in langs for _ in range(reps_by_lang[l].shape[1])]
        sns.scatterplot(x=pts[:, 0].numpy(), y=pts[:, 1].numpy(), hue=hue, palette=palette, s=6, linewidth=0,
                        alpha=0.7, ax=ax, legend=ax is axes.flat[0])
        title = f"layer {layer}" + (f"  sil={sil[layer]:.2f}" if layer in sil else "")
        ax.set(title=title, xticks=[], yticks=[])
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    if axes.flat[0].get_legend() is not None:
        sns.move_legend(axes.flat[0], "upper left", bbox_to_anchor=(0, -0.05), ncol=len(langs), fontsize=6)
    return _save(fig, path)


def random_cosine_baseline(dim: int, n: int = 10000, quantile: float = 0.95, seed: int = 0) -> float:
    """The ``quantile`` of |cos| between two independent Gaussian directions in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n, dim, generator=g, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).abs()
    return float(torch.quantile(cos, quantile))


def vector_cosines(v_en: torch.Tensor, v_loc: torch.Tensor, seed: int = 0, n_random: int = 10000,
                   quantile: float = 0.95) -> list[dict]:
    """Per layer: cos(v_EN[l], v_LOC[l]) and the random-direction baseline for that dimension."""
    v_en, v_loc = getattr(v_en, "vectors", v_en), getattr(v_loc, "vectors", v_loc)
    if v_en.shape != v_loc.shape or v_en.dim() != 2:
        raise ValueError(f"v_en, v_loc: expected two Tensor[n_layers, hidden] of one shape, got "
                         f"{tuple(v_en.shape)} and {tuple(v_loc.shape)}")
    baseline = random_cosine_baseline(v_en.shape[1], n_random, quantile, seed)
    cos = torch.nn.functional.cosine_similarity(v_en.double(), v_loc.double(), dim=-1)
    return [{"layer": l, "cosine": float(c), f"random_abs_cos_q{round(quantile * 100)}": baseline,
             "above_random": abs(float(c)) > baseline} for l, c in enumerate(cos)]


def retrieval_by_layer(model=None, tokenizer=None, languages: Sequence[str] = ("ar", "es", "id", "ko", "zh"),
                       split: str = "devtest", n: int | None = None, pivot: str = "en", center: str = "none",
                       reps_by_lang: Reps | None = None, batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Rows ``{layer, language, to_en, from_en}``: top-1 retrieval L->pivot and pivot->L per layer.

    Pass ``reps_by_lang`` (from :func:`flores_representations`) to reuse computed representations.
    ``center="language"`` subtracts each language's mean first (a common, stronger variant).
    """
    if reps_by_lang is None:
        if model is None or tokenizer is None:
            raise ValueError("retrieval_by_layer: give model and tokenizer, or reps_by_lang")
        langs = [pivot] + [l for l in languages if l != pivot]
        reps_by_lang = flores_representations(model, tokenizer, langs, split, n, batch_size=batch_size,
                                              progress=progress)
    n_layers, _ = _check_reps(reps_by_lang)
    if pivot not in reps_by_lang:
        raise ValueError(f"pivot: {pivot!r} is not among the languages {list(reps_by_lang)}")
    rows = []
    for lang in [l for l in languages if l != pivot and l in reps_by_lang]:
        for layer in range(n_layers):
            src, tgt = reps_by_lang[lang][layer].double(), reps_by_lang[pivot][layer].double()
            if center == "language":
                src, tgt = src - src.mean(0), tgt - tgt.mean(0)
            elif center == "global":
                mean = torch.cat([src, tgt]).mean(0)
                src, tgt = src - mean, tgt - mean
            elif center not in (None, "none"):
                raise ValueError(f"center: expected 'none', 'global' or 'language', got {center!r}")
            rows.append({"layer": layer, "language": lang, "to_en": retrieval_top1(src, tgt),
                         "from_en": retrieval_top1(tgt, src)})
    return rows


def plot_by_layer(rows: list[dict], y: Sequence[str], path: str | Path, hue: str | None = None,
                  title: str = "", baseline: float | None = None) -> Path:
    """Line plot of columns ``y`` against ``layer`` (one line per ``hue`` value and column)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = [{"layer": r["layer"], "value": r[col], "series": f"{r[hue]} {col}" if hue else col}
            for r in rows for col in y]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(x=[r["layer"] for r in long], y=[r["value"] for r in long], hue=[r["series"] for r in long],
                 marker="o", ax=ax)
    if baseline is not None:
        for b in (baseline, -baseline):
            ax.axhline(b, color="grey", ls="--", lw=1)
    ax.set(xlabel="layer", title=title)
    return _save(fig, path)


def _loc_vs_en_cosines(model, tokenizer, languages, n, progress) -> list[dict]:
    from evaluate.contrasts import en_transfer_vectors, loc_vectors

    rows = []
    for lang in languages:
        v_en = en_transfer_vectors(model, tokenizer, lang, n=n, progress=progress)
        v_loc = loc_vectors(model, tokenizer, lang, progress=progress)
        rows += [dict(r, language=lang) for r in vector_cosines(v_en, v_loc)]
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Layer-wise representation analyses on FLORES")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--languages", default="en,ar,es,id,ko,zh")
    ap.add_argument("--split", default="devtest")
    ap.add_argument("--n", type=int, default=200, help="first n parallel sentences")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="runs/analysis")
    ap.add_argument("--cosines", action="store_true", help="also cos(v_EN, v_LOC) (needs evaluate.tasks)")
    args = ap.parse_args(argv)
    from interventions.models import load_model, load_tokenizer

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    langs = args.languages.split(",")
    out = Path(args.out)
    reps = flores_representations(model, tokenizer, langs, args.split, args.n, batch_size=args.batch_size)
    separation = language_separation(reps)
    retrieval = retrieval_by_layer(languages=langs, reps_by_lang=reps)
    retrieval_centred = retrieval_by_layer(languages=langs, reps_by_lang=reps, center="language")
    write_csv(separation, out / "language_separation.csv")
    write_csv(retrieval, out / "retrieval.csv")
    write_csv(retrieval_centred, out / "retrieval_language_centred.csv")
    layerwise_pca_grid(reps, out / "pca_grid.png", separation=separation)
    plot_by_layer(separation, ["silhouette", "distance_to_en_centroid"], out / "language_separation.png",
                  title="language separation (global-centred cosine)")
    plot_by_layer(retrieval, ["to_en", "from_en"], out / "retrieval.png", hue="language",
                  title=f"FLORES {args.split} top-1 retrieval (mean-pooled, cosine)")
    result = {"args": vars(args), "separation": separation, "retrieval": retrieval,
              "retrieval_language_centred": retrieval_centred}
    if args.cosines:
        cosines = _loc_vs_en_cosines(model, tokenizer, [l for l in langs if l != "en"], args.n, True)
        write_csv(cosines, out / "vector_cosines.csv")
        plot_by_layer(cosines, ["cosine"], out / "vector_cosines.png", hue="language", title="cos(v_EN, v_LOC)",
                      baseline=next(v for k, v in cosines[0].items() if k.startswith("random_abs_cos")))
        result["cosines"] = cosines
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    for r in separation:
        mean_ret = [x for x in retrieval if x["layer"] == r["layer"]]
        print(f"layer {r['layer']:2d}  silhouette {r['silhouette']:+.3f}  dist_to_en {r['distance_to_en_centroid']:.3f}"
              f"  retrieval L->en {sum(x['to_en'] for x in mean_ret) / max(len(mean_ret), 1):.3f}"
              f"  en->L {sum(x['from_en'] for x in mean_ret) / max(len(mean_ret), 1):.3f}")
    return result


if __name__ == "__main__":
    main()
