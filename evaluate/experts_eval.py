"""Measuring language experts: cross-lingual retrieval before/after, and their side effects.

- Retrieval (Sundar et al., ACL 2025): FLORES devtest sentences in L and their English translations are
  mean-pooled at every decoder layer's output (``block_output``); top-1 cosine retrieval L->en and en->L is the
  share of sentences whose nearest neighbour is their translation. With the experts forced (all positions)
  the same is measured again; the headline is the ratio after/before with a paired bootstrap CI over sentences.
- Side effects: share of letters in L's script in greedy continuations of FLORES devtest prefixes in L, and
  perplexity on held-out FLORES devtest sentences in L, before/after (sentences disjoint from retrieval's).
"""

from __future__ import annotations

import contextlib
import json
import math
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluate.stats import bootstrap_ci

SCRIPTS = {
    "ko": [(0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)],
    "zh": [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)],
    "ar": [(0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "fa": [(0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "el": [(0x0370, 0x03FF), (0x1F00, 0x1FFF)],
    "am": [(0x1200, 0x139F), (0x2D80, 0x2DDF)],
}
_LATIN = [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F)]
RETRIEVAL_SENTENCES = (0, 500)  # devtest slice retrieval draws from
PROMPT_SENTENCES = (500, 700)  # devtest slice for generation prompts
PERPLEXITY_SENTENCES = (700, 1012)  # devtest slice for held-out perplexity


def script_share(text: str, language: str) -> float:
    """Share of the letters of ``text`` that are in ``language``'s script (NaN when there are no letters)."""
    ranges = SCRIPTS.get(language, _LATIN)
    letters = [ord(ch) for ch in unicodedata.normalize("NFC", text) if ch.isalpha()]
    if not letters:
        return float("nan")
    return sum(any(a <= c <= b for a, b in ranges) for c in letters) / len(letters)


def _steering(model, config):
    if config is None or not config.interventions:
        return contextlib.nullcontext()
    from interventions.steer import steer

    return steer(model, config)


def layer_representations(model, tokenizer, texts: Sequence[str], config=None, batch_size: int = 16,
                          max_length: int = 128) -> torch.Tensor:
    """Mean-pooled (padding excluded, ``<bos>`` kept) ``block_output`` of every decoder layer, ``config`` forced,
    -> float32 ``[layers, n, hidden]``."""
    from interventions.vectors import sentence_representations

    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # similar lengths together: less padding
    with _steering(model, config):
        reps = sentence_representations(model, tokenizer, [texts[i] for i in order], batch_size=batch_size,
                                        progress=False, exclude_special=False, max_length=max_length)
    return reps[:, torch.argsort(torch.tensor(order))]


def retrieval_hits(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., n]``: is sentence i's cosine nearest neighbour among ``target`` its own translation i?"""
    s = torch.nn.functional.normalize(source.float(), dim=-1)
    t = torch.nn.functional.normalize(target.float(), dim=-1)
    nearest = (s @ t.transpose(-1, -2)).argmax(-1)
    return nearest == torch.arange(source.shape[-2])


def bootstrap_ratio(before: np.ndarray, after: np.ndarray, n_boot: int = 2000, seed: int = 0,
                    alpha: float = 0.05) -> tuple[float, float, float]:
    """after/before ratio of mean accuracy with a paired percentile bootstrap CI over sentences."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(before), size=(n_boot, len(before)))
    b, a = before[idx].mean(1), after[idx].mean(1)
    ratios = np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)
    point = after.mean() / before.mean() if before.mean() > 0 else float("nan")
    lo, hi = np.nanquantile(ratios, [alpha / 2, 1 - alpha / 2]) if np.isfinite(ratios).any() else (np.nan,) * 2
    return float(point), float(lo), float(hi)


APPLY_TO = ("source", "both")
LAYER_SUMMARIES = ("mean", "middle")
"""Pre-registered layer summaries: ``mean`` averages each sentence's hits over all layers, ``middle`` is layer
``n_layers // 2``. Neither is chosen by looking at the ratios (a max over layers would be post hoc)."""


def _apply_modes(apply_to) -> list[str]:
    modes = [apply_to] if isinstance(apply_to, str) else list(apply_to)
    if not modes or any(m not in APPLY_TO for m in modes):
        raise ValueError(f"apply_to: expected 'source', 'both' or a list of them, got {apply_to!r}")
    return list(dict.fromkeys(modes))


def _ratio_row(common: dict, layer, after: np.ndarray, before: np.ndarray, seed: int) -> dict:
    ratio, r_lo, r_hi = bootstrap_ratio(before, after, seed=seed)
    _, a_lo, a_hi = bootstrap_ci(after, n_boot=2000, seed=seed)
    return {**common, "layer": layer, "top1": float(after.mean()), "top1_ci": [a_lo, a_hi],
            "top1_before": float(before.mean()), "ratio": ratio, "ratio_ci": [r_lo, r_hi]}


def retrieval_sweep(model, tokenizer, ranking, ks: Sequence[int], n: int = 200, apply_to="both",
                    seed: int = 0, batch_size: int = 16, en_base: torch.Tensor | None = None) -> list[dict]:
    """Top-1 retrieval L->en and en->L per layer for k=0 (before) and every k, with after/before ratios.

    ``apply_to="source"`` forces the experts only while encoding the L sentences (English stays the base model's);
    ``"both"`` encodes both sides with the experts forced; a list of both modes shares the forward passes.
    Besides one row per layer, rows with ``layer`` ``"mean"`` and ``"middle"`` hold the pre-registered summaries.
    ``en_base``: the unsteered English representations of the first ``n`` sentences, if already computed (they
    are the same for every language).
    """
    from evaluate.loaders import load_flores
    from tqdm.auto import tqdm

    modes = _apply_modes(apply_to)
    lang = ranking.language
    lo, hi = RETRIEVAL_SENTENCES
    if not 0 < n <= hi - lo:
        raise ValueError(f"n: expected 1..{hi - lo} devtest sentences for retrieval, got {n}")
    src_texts, en_texts = load_flores(lang, "devtest")[lo:lo + n], load_flores("en", "devtest")[lo:lo + n]
    if en_base is None:
        en_base = layer_representations(model, tokenizer, en_texts, batch_size=batch_size)
    elif en_base.shape[1] != n:
        raise ValueError(f"en_base: expected representations of {n} sentences, got {en_base.shape[1]}")
    src_base = layer_representations(model, tokenizer, src_texts, batch_size=batch_size)
    base = {"L->en": retrieval_hits(src_base, en_base), "en->L": retrieval_hits(en_base, src_base)}
    middle = base["L->en"].shape[0] // 2
    rows = []
    for k in tqdm(sorted({0, *ks}), desc=f"retrieval {lang}"):  # k=0 rows: the baseline itself
        hits_by_mode = {m: base for m in modes}
        if k > 0:
            config = ranking.config(model, k)
            src = layer_representations(model, tokenizer, src_texts, config, batch_size)
            en = layer_representations(model, tokenizer, en_texts, config, batch_size) if "both" in modes else None
            for m in modes:
                target = en if m == "both" else en_base
                hits_by_mode[m] = {"L->en": retrieval_hits(src, target), "en->L": retrieval_hits(target, src)}
        for m, hits in hits_by_mode.items():
            for direction, h in hits.items():
                common = {"language": lang, "k": k, "direction": direction, "n": n, "apply_to": m}
                after, before = h.float().numpy(), base[direction].float().numpy()
                for layer in range(h.shape[0]):
                    rows.append(_ratio_row(common, layer, after[layer], before[layer], seed))
                rows.append(_ratio_row(common, "mean", after.mean(0), before.mean(0), seed))
                rows.append(_ratio_row({**common, "middle_layer": middle}, "middle", after[middle], before[middle],
                                       seed))
    return rows


def _prefix(sentence: str, language: str) -> str:
    if language in ("zh", "ja"):
        return sentence[: max(1, len(sentence) // 2)]
    words = sentence.split()
    return " ".join(words[: max(1, len(words) // 2)])


def generation_script_share(model, tokenizer, language: str, config=None, n_prompts: int = 30,
                            new_tokens: int = 20, batch_size: int = 16) -> dict:
    """Greedy continuations of ``n_prompts`` devtest prefixes in ``language``; mean script share and samples."""
    from evaluate.loaders import load_flores

    lo, hi = PROMPT_SENTENCES
    prompts = [_prefix(s, language) for s in load_flores(language, "devtest")[lo:lo + min(n_prompts, hi - lo)]]
    device = next(model.parameters()).device
    outs = []
    with _steering(model, config), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            gen = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    shares = np.array([script_share(o, language) for o in outs])
    valid = shares[np.isfinite(shares)]
    ci = bootstrap_ci(valid, n_boot=2000)[1:] if len(valid) else (float("nan"),) * 2
    return {"script_share": float(valid.mean()) if len(valid) else float("nan"), "script_share_ci": list(ci),
            "n_prompts": len(prompts), "no_letters": int((~np.isfinite(shares)).sum()),
            "samples": [{"prompt": p, "continuation": o} for p, o in zip(prompts[:3], outs[:3])]}


def perplexity(model, tokenizer, texts: Sequence[str], config=None, batch_size: int = 8) -> float:
    """Token-level perplexity of ``texts`` (padding excluded; the first token is conditioned on BOS)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with _steering(model, config), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True).to(device)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool() & enc["attention_mask"][:, :-1].bool()
            lp = torch.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
            nll -= float(lp[mask].sum())
            count += int(mask.sum())
    return math.exp(nll / max(count, 1))


def side_effects(model, tokenizer, ranking, k: int, n_prompts: int = 30, new_tokens: int = 20,
                 n_perplexity: int = 50) -> dict:
    from evaluate.loaders import load_flores

    lang = ranking.language
    lo, hi = PERPLEXITY_SENTENCES
    held_out = load_flores(lang, "devtest")[lo:lo + min(n_perplexity, hi - lo)]
    config = ranking.config(model, k)
    out = {"language": lang, "k": k}
    for tag, cfg in (("before", None), ("after", config)):
        out[tag] = {"perplexity": perplexity(model, tokenizer, held_out, cfg),
                    **generation_script_share(model, tokenizer, lang, cfg, n_prompts, new_tokens)}
    return out


def write_rows(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def layer_rows(rows: list[dict]) -> list[dict]:
    """The per-layer rows (without the ``mean``/``middle`` summaries)."""
    return [r for r in rows if isinstance(r["layer"], int)]


def summary_rows(rows: list[dict], summaries: Sequence[str] = LAYER_SUMMARIES) -> list[dict]:
    """Rows of the pre-registered layer summaries for k > 0, sorted by language, apply_to, k, direction."""
    sel = [r for r in rows if r["layer"] in summaries and r["k"] > 0]
    return sorted(sel, key=lambda r: (r["language"], r.get("apply_to", ""), r["k"], r["direction"],
                                      list(summaries).index(r["layer"])))


def max_layer_rows(rows: list[dict]) -> list[dict]:
    """Per (language, apply_to, k>0, direction): the layer with the highest ratio (post hoc: for comparison with
    the paper's "up to" numbers only)."""
    out, per = [], layer_rows(rows)
    for key in sorted({(r["language"], r.get("apply_to", ""), r["k"], r["direction"]) for r in per if r["k"] > 0}):
        sel = [r for r in per if (r["language"], r.get("apply_to", ""), r["k"], r["direction"]) == key
               and np.isfinite(r["ratio"])]
        if sel:
            out.append(max(sel, key=lambda r: r["ratio"]))
    return out


def format_ratios(rows: list[dict]) -> str:
    """Markdown table: pre-registered summaries (mean over layers, middle layer), plus the post hoc max layer."""
    best = {(r["language"], r.get("apply_to", ""), r["k"], r["direction"]): r for r in max_layer_rows(rows)}
    lines = ["| language | apply to | k | direction | layers | top-1 before | top-1 after | ratio [95% CI] | "
             "post hoc max layer: ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary_rows(rows):
        where = "mean" if r["layer"] == "mean" else f"middle ({r.get('middle_layer')})"
        b = best.get((r["language"], r.get("apply_to", ""), r["k"], r["direction"]))
        post = f"{b['layer']}: {b['ratio']:.2f}" if b and r["layer"] == "mean" else ""
        lines.append(f"| {r['language']} | {r.get('apply_to', '')} | {r['k']} | {r['direction']} | {where} | "
                     f"{r['top1_before']:.3f} | {r['top1']:.3f} | {r['ratio']:.2f} [{r['ratio_ci'][0]:.2f}, "
                     f"{r['ratio_ci'][1]:.2f}] | {post} |")
    return "\n".join(lines)


def plot_retrieval(rows: list[dict], path: str | Path) -> None:
    """Top-1 retrieval against layer, one line per k, one panel per direction (one language per file)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([{k: v for k, v in r.items() if not k.endswith("_ci")} for r in layer_rows(rows)])
    grid = sns.relplot(data=df, x="layer", y="top1", hue="k", col="direction", row="apply_to", kind="line",
                       marker="o", palette="viridis", height=3.2, aspect=1.3)
    grid.set_axis_labels("layer (block_output)", "top-1 retrieval")
    grid.figure.suptitle(f"FLORES devtest retrieval, {df['language'].iloc[0]} experts forced "
                         f"(n={df['n'].iloc[0]}; rows: experts forced on L only / on L and en)", y=1.03)
    grid.savefig(str(path), dpi=120, bbox_inches="tight")
    matplotlib.pyplot.close(grid.figure)


def english_representations(model, tokenizer, n: int, batch_size: int = 16) -> torch.Tensor:
    """Unsteered representations of the English side of retrieval (shared by every language's sweep)."""
    from evaluate.loaders import load_flores

    lo, _ = RETRIEVAL_SENTENCES
    return layer_representations(model, tokenizer, load_flores("en", "devtest")[lo:lo + n], batch_size=batch_size)


def run_report(model, tokenizer, rankings: dict, ks: Sequence[int], out: str | Path, retrieval_n: int = 200,
               apply_to="both", side_effect_k: int | None = None, n_prompts: int = 30,
               new_tokens: int = 20, n_perplexity: int = 50, seed: int = 0, meta: dict | None = None,
               batch_size: int = 16) -> dict:
    """Retrieval sweep + side effects + plots for every language; rewrites the tables and REPORT.md after each."""
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ks = sorted({0, *ks})
    all_rows, effects, timings = [], [], {}
    en_base = english_representations(model, tokenizer, retrieval_n, batch_size)
    for lang, ranking in rankings.items():
        t0 = time.time()
        rows = retrieval_sweep(model, tokenizer, ranking, ks, n=retrieval_n, apply_to=apply_to, seed=seed,
                               batch_size=batch_size, en_base=en_base)
        write_rows(rows, out / f"retrieval_{lang}.json")
        plot_retrieval(rows, out / f"retrieval_{lang}.png")
        all_rows += rows
        if side_effect_k:
            effects.append(side_effects(model, tokenizer, ranking, side_effect_k, n_prompts, new_tokens,
                                        n_perplexity))
            write_rows(effects, out / "side_effects.json")
        timings[lang] = time.time() - t0
        _write_report(out, rankings, ks, all_rows, effects, retrieval_n, apply_to, meta, timings)
    return {"rows": all_rows, "side_effects": effects}


def _ci(effect: dict) -> str:
    lo, hi = effect.get("script_share_ci", (float("nan"),) * 2)
    return f"[{lo:.2f}, {hi:.2f}]"


def _write_report(out, rankings, ks, all_rows, effects, retrieval_n, apply_to, meta, timings) -> None:
    import platform

    import transformers

    write_rows(all_rows, out / "retrieval.json")
    lines = ["# Language experts: retrieval and side effects", "",
             f"Model: {meta.get('model') if meta else ''}; ks={ks}; retrieval n={retrieval_n} FLORES devtest "
             f"sentences per language, experts forced on {apply_to}; 95% paired bootstrap CIs over sentences.", "",
             "## Retrieval ratios (after/before)", "",
             "Pre-registered layer summaries: the mean over all layers (each sentence's hits averaged over layers) "
             "and the middle layer. The last column is the layer with the highest ratio, chosen after the fact "
             "(shown only to compare with the paper's \"up to\" figure).", "",
             format_ratios(all_rows), ""]
    if effects:
        lines += ["## Side effects", "", "| language | k | perplexity before -> after | script share before -> after |",
                  "|---|---|---|---|"]
        for e in effects:
            b, a = e["before"], e["after"]
            lines.append(f"| {e['language']} | {e['k']} | {b['perplexity']:.1f} -> {a['perplexity']:.1f} | "
                         f"{b['script_share']:.3f} {_ci(b)} -> {a['script_share']:.3f} {_ci(a)} |")
        lines.append("")
    done = sorted({r["language"] for r in all_rows})
    lines += ["## Plots", ""] + [f"![{lang}](retrieval_{lang}.png)" for lang in done] + [""]
    (out / "REPORT.md").write_text("\n".join(lines))
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    provenance = {"meta": meta or {}, "git_commit": commit, "timings_s": timings, "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version()}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1, default=str))
