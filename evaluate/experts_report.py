"""The experts sweep written out: retrieval tables, per-sentence hits, side effects, tests, plots and REPORT.md.

:func:`run_report` runs :func:`evaluate.experts_eval.sweep` and writes into ``out``: ``retrieval.json`` (every
row: per layer and the pre-registered summaries), ``hits.safetensors`` (per-sentence hits of every set, for
re-testing), ``side_effects.json``, ``retrieval_<L>[_<pool>].png`` (after each language), then ``tests.json``
(:mod:`evaluate.experts_verdict`: both families with Holm-adjusted p-values, and the side-effect price),
``REPORT.md`` and ``provenance.json``.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from evaluate import experts_verdict as verdicts
from evaluate.experts_eval import APPLY_TO, LAYER_SUMMARIES, SweepResult, save_hits, sweep
from evaluate.tables import markdown_table


def write_rows(rows, path: str | Path) -> None:
    from interventions.fsutil import atomic_write

    atomic_write(path, json.dumps(rows, indent=1, ensure_ascii=False, default=float))


def layer_rows(rows: list[dict]) -> list[dict]:
    """The per-layer rows (without the ``mean``/``middle`` summaries)."""
    return [r for r in rows if isinstance(r["layer"], int)]


def _key(r: dict) -> tuple:
    return r.get("pool", ""), r["language"], r.get("set", "experts"), r.get("apply_to", ""), r["k"], r["direction"]


def summary_rows(rows: list[dict], summaries: Sequence[str] = LAYER_SUMMARIES) -> list[dict]:
    """Rows of the pre-registered layer summaries for k > 0, sorted by pool, language, set, apply_to, k, direction."""
    sel = [r for r in rows if r["layer"] in summaries and r["k"] > 0]
    return sorted(sel, key=lambda r: (*_key(r), list(summaries).index(r["layer"])))


def max_layer_rows(rows: list[dict]) -> list[dict]:
    """Per (pool, language, set, apply_to, k>0, direction): the layer with the highest ratio (post hoc: for
    comparison with the paper's "up to" numbers only)."""
    per: dict[tuple, list[dict]] = {}
    for r in layer_rows(rows):
        if r["k"] > 0 and np.isfinite(r["ratio"]):
            per.setdefault(_key(r), []).append(r)
    return [max(sel, key=lambda r: r["ratio"]) for _, sel in sorted(per.items())]


def format_ratios(rows: list[dict]) -> str:
    """Markdown table: pre-registered summaries (mean over layers, middle layer), plus the post hoc max layer."""
    best = {_key(r): r for r in max_layer_rows(rows)}
    table = []
    for r in summary_rows(rows):
        where = "mean" if r["layer"] == "mean" else f"middle ({r.get('middle_layer')})"
        b = best.get(_key(r))
        post = f"{b['layer']}: {b['ratio']:.2f}" if b and r["layer"] == "mean" else ""
        table.append([*_key(r), where, f"{r['top1_before']:.3f}", f"{r['top1']:.3f}",
                      f"{r['ratio']:.2f} [{r['ratio_ci'][0]:.2f}, {r['ratio_ci'][1]:.2f}]", post])
    return markdown_table(["pool", "language", "set", "apply to", "k", "direction", "layers", "top-1 before",
                           "top-1 after", "ratio [95% CI]", "post hoc max layer: ratio"], table)


def plot_retrieval(rows: list[dict], path: str | Path) -> None:
    """Top-1 retrieval against layer (one language and pool): a line per k, dashes per set, a panel per
    direction (columns) and apply_to (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([{k: v for k, v in r.items() if not k.endswith("_ci")} for r in layer_rows(rows)])
    grid = sns.relplot(data=df, x="layer", y="top1", hue="k", style="set", col="direction", row="apply_to",
                       kind="line", palette="viridis", height=3.2, aspect=1.3)
    grid.set_axis_labels("layer (block_output)", "top-1 retrieval")
    grid.figure.suptitle(f"FLORES devtest retrieval, {df['language'].iloc[0]} ({df['pool'].iloc[0]}): experts and "
                         f"controls forced (n={df['n'].iloc[0]}; rows: forced on L only / on L and en)", y=1.03)
    path = Path(path)
    grid.savefig(str(path), dpi=120, bbox_inches="tight")
    matplotlib.pyplot.close(grid.figure)


def _plot_language(result: SweepResult, language: str, out: Path) -> None:
    pools = list(dict.fromkeys(r["pool"] for r in result.rows if r["language"] == language))
    for pool in pools:
        rows = [r for r in result.rows if r["language"] == language and r["pool"] == pool]
        plot_retrieval(rows, out / (f"retrieval_{language}.png" if len(pools) == 1 else
                                    f"retrieval_{language}_{pool}.png"))


def run_report(model, tokenizer, rankings_by_pool: Mapping[str, Mapping], ks: Sequence[int], out: str | Path, *,
               controls: Sequence[str] = (), retrieval_n: int = 200, apply_to=APPLY_TO,
               side_effect_ks: Sequence[int] = (), n_prompts: int = 30, new_tokens: int = 20, n_perplexity: int = 50,
               seed: int = 0, n_boot: int = verdicts.N_BOOT, meta: dict | None = None, batch_size: int = 16) -> dict:
    """The sweep of every pool x language x set x k (:func:`evaluate.experts_eval.sweep`), written into ``out``
    after each language, then the pre-registered tests and REPORT.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[str] = []

    def after_language(result: SweepResult, language: str) -> None:
        done.append(language)
        write_rows(result.rows, out / "retrieval.json")
        save_hits(result.hits, out / "hits.safetensors")
        if result.effects:
            write_rows(result.effects, out / "side_effects.json")
        _plot_language(result, language, out)

    result = sweep(model, tokenizer, rankings_by_pool, ks, controls=controls, apply_to=apply_to,
                   retrieval_n=retrieval_n, seed=seed, side_effect_ks=side_effect_ks, n_perplexity=n_perplexity,
                   n_prompts=n_prompts, new_tokens=new_tokens, batch_size=batch_size, after_language=after_language)
    tests = {control: verdicts.control_tests(result.hits, control, n_boot=n_boot, seed=seed) for control in controls}
    price = verdicts.side_effect_price(result.effects)
    write_rows({"families": tests, "side_effect_price": price, "n_boot": n_boot, "alpha": verdicts.ALPHA,
                "headline": verdicts.HEADLINE}, out / "tests.json")
    settings = {"pools": list(rankings_by_pool), "languages": done, "ks": sorted(set(ks)), "controls": list(controls),
                "apply_to": list(apply_to) if not isinstance(apply_to, str) else [apply_to],
                "retrieval_n": retrieval_n, "side_effect_ks": sorted(set(side_effect_ks)), "seed": seed}
    _write_report(out, result, tests, price, settings, meta or {})
    return {"rows": result.rows, "hits": result.hits, "side_effects": result.effects, "tests": tests,
            "price": price, "passes": result.passes}


def _write_report(out: Path, result: SweepResult, tests: dict, price: list, settings: dict, meta: dict) -> None:
    from interventions.fsutil import atomic_write

    lines = ["# Language experts and matched controls: retrieval and side effects", "",
             f"Model: {meta.get('model', '')}; pools {settings['pools']}; languages {settings['languages']}; "
             f"k {settings['ks']}; forced on {settings['apply_to']}; controls {settings['controls'] or 'none'}; "
             f"retrieval n = {settings['retrieval_n']} FLORES devtest sentences per language (pooled without "
             f"<bos>); forward passes {result.passes}.", "",
             "Tests, summaries and falsifiers were fixed before the numbers: `evaluate/experts_verdict.py`.", ""]
    if "random" in tests:
        lines += ["## Verdict (pre-registered headline)", ""] + (verdicts.headline(tests["random"]) or [
            "(the headline cell was not part of this sweep)"]) + [""]
    for control, rows in tests.items():
        family = "primary" if control == "random" else "secondary"
        lines += [f"## Experts vs {verdicts.CONTROL_WORDS.get(control, control)} ({family} family, Holm over "
                  f"{len(rows)} tests)", "", verdicts.format_tests(rows), ""]
    if price:
        lines += ["## Side-effect price", "", verdicts.format_price(price), ""]
    lines += ["## Retrieval ratios (after/before)", "",
              "Pre-registered layer summaries: the mean over all layers (each sentence's hits averaged over layers) "
              "and the middle layer. The last column is the layer with the highest ratio, chosen after the fact "
              "(shown only to compare with the paper's \"up to\" figure).", "", format_ratios(result.rows), "",
              "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in sorted(out.glob("retrieval_*.png"))] + [""]
    atomic_write(out / "REPORT.md", "\n".join(lines))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import transformers

    provenance = {"meta": meta, "settings": settings, "passes": result.passes, "git_commit": commit,
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "python": platform.python_version()}
    atomic_write(out / "provenance.json", json.dumps(provenance, indent=1, default=str))


def save_sets(model, rankings_by_pool: Mapping[str, Mapping], k: int, out: str | Path, controls: Sequence[str] = (),
              seed: int = 0) -> list[dict]:
    """Save the top-``k`` experts and their matched controls of every pool and language as set-kind intervention
    directories: ``out/<L>/<set>_k<k>`` (one pool) or ``out/<L>/<pool>/<set>_k<k>``; returns what was written."""
    out = Path(out)
    written = []
    for pool, by_lang in rankings_by_pool.items():
        for lang, ranking in by_lang.items():
            for name in ["experts", *controls]:
                where = Path(lang) if len(rankings_by_pool) == 1 else Path(lang) / pool
                directory = where / f"{name}_k{k}"
                config = ranking.config(model, k, control=None if name == "experts" else name, seed=seed)
                config.save_pretrained(out / directory, model=model)
                written.append({"pool": pool, "language": lang, "set": name, "k": k, "path": str(directory)})
    return written
