"""Measuring language experts and their controls: retrieval before/after, and side effects, in one sweep.

- Retrieval (Sundar et al., ACL 2025): FLORES devtest sentences in L and their English translations are pooled at
  every decoder layer's output (:func:`evaluate.retrieval.pooled_representations`: mean over non-special tokens,
  no ``<bos>``); top-1 cosine retrieval L->en and en->L (:func:`evaluate.retrieval.retrieval_hits`, float64) is
  the share of sentences whose nearest neighbour is their translation. With a unit set forced (all positions) the
  same is measured again: ``source`` forces it while encoding the L side only, ``both`` on L and English (the two
  modes share the forward passes). Ratios after/before carry a paired bootstrap CI over sentences.
- Side effects: perplexity of held-out FLORES devtest sentences in L, and the share of letters in L's script in
  greedy continuations of devtest prefixes in L (three disjoint devtest slices: retrieval, prompts, perplexity).

:func:`sweep` measures every unit set of the sweep: for each pool of units (a component, or several ranked
together), language L, set (``experts`` and the controls of :data:`interventions.experts.CONTROLS`) and k. What
does not depend on the set is computed once: the unsteered English side (once for all languages), the unsteered L
side and the unsteered side effects (once per language); each set costs its own steered passes only (forcing units
changes everything downstream, so those cannot be shared). :func:`planned_passes` counts them before any work.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from evaluate.retrieval import pooled_representations, retrieval_hits, steering
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
APPLY_TO = ("source", "both")
DIRECTIONS = ("L->en", "en->L")
LAYER_SUMMARIES = ("mean", "middle")
"""Pre-registered layer summaries: ``mean`` averages each sentence's hits over all layers, ``middle`` is layer
``n_layers // 2``. Neither is chosen by looking at the results (a max over layers would be post hoc)."""


def script_share(text: str, language: str) -> float:
    """Share of the letters of ``text`` that are in ``language``'s script (NaN when there are no letters)."""
    ranges = SCRIPTS.get(language, _LATIN)
    letters = [ord(ch) for ch in unicodedata.normalize("NFC", text) if ch.isalpha()]
    if not letters:
        return float("nan")
    return sum(any(a <= c <= b for a, b in ranges) for c in letters) / len(letters)


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
    with steering(model, config), torch.no_grad():
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
    with steering(model, config), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True).to(device)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool() & enc["attention_mask"][:, :-1].bool()
            lp = torch.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
            nll -= float(lp[mask].sum())
            count += int(mask.sum())
    return math.exp(nll / max(count, 1))


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


def apply_modes(apply_to) -> list[str]:
    modes = [apply_to] if isinstance(apply_to, str) else list(apply_to)
    if not modes or any(m not in APPLY_TO for m in modes):
        raise ValueError(f"apply_to: expected 'source', 'both' or a list of them, got {apply_to!r}")
    return list(dict.fromkeys(modes))


def _ratio_row(common: dict, layer, after: np.ndarray, before: np.ndarray, seed: int) -> dict:
    ratio, r_lo, r_hi = bootstrap_ratio(before, after, seed=seed)
    _, a_lo, a_hi = bootstrap_ci(after, n_boot=2000, seed=seed)
    return {**common, "layer": layer, "top1": float(after.mean()), "top1_ci": [a_lo, a_hi],
            "top1_before": float(before.mean()), "ratio": ratio, "ratio_ci": [r_lo, r_hi]}


def ratio_rows(common: dict, after: torch.Tensor, before: torch.Tensor, seed: int = 0) -> list[dict]:
    """Rows of top-1 after/before per layer plus the pre-registered summaries (``layer`` = "mean", "middle"),
    from bool hits ``[layers, n]``."""
    a, b = after.double().numpy(), before.double().numpy()
    middle = a.shape[0] // 2
    return ([_ratio_row(common, layer, a[layer], b[layer], seed) for layer in range(a.shape[0])]
            + [_ratio_row(common, "mean", a.mean(0), b.mean(0), seed),
               _ratio_row({**common, "middle_layer": middle}, "middle", a[middle], b[middle], seed)])


# ----------------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------------

def pools(rankings: Mapping[str, object], separate: bool = False) -> dict[str, dict]:
    """``{pool: {language: ranking}}``: one pool of every ranked component together (named ``a+b``), or with
    ``separate`` one pool per component (:meth:`ExpertRanking.restrict`, from the same finding pass)."""
    first = next(iter(rankings.values()))
    if not separate:
        return {"+".join(first.components): dict(rankings)}
    return {c: {lang: r.restrict(c) for lang, r in rankings.items()} for c in first.components}


def capacity_problem(model, components: Sequence[str], separate: bool, controls: Sequence[str], k_max: int
                     ) -> str | None:
    """Why ``model`` cannot hold ``k_max`` experts (and, with ``controls``, their matched sets) in every pool, or
    None; checked before finding. A control needs as many non-experts in a block as the experts there, so every
    block must hold at least ``2 * k_max`` units."""
    from interventions.experts import unit_widths

    for pool in ([[c] for c in components] if separate else [list(components)]):
        widths = unit_widths(model, pool)
        if k_max > sum(widths):
            return f"{k_max} experts asked, the model has {sum(widths)} units in {'+'.join(pool)}"
        if controls and min(widths) < 2 * k_max:
            return (f"a {'+'.join(pool)} block has {min(widths)} units; matching {k_max} experts with a control needs "
                    f">= {2 * k_max} per block (the controls avoid every ranked expert)")
    return None


def unit_sets(rankings_by_pool: Mapping[str, Mapping], ks: Sequence[int], controls: Sequence[str] = (),
              seed: int = 0) -> list[tuple[str, str, str, int]]:
    """Every (pool, language, set, k) of the sweep, set in ``experts`` then ``controls``; each set's units are
    drawn here once, so a control that cannot be matched fails before any steered pass."""
    out = []
    for pool, by_lang in rankings_by_pool.items():
        for lang, ranking in by_lang.items():
            for name in ["experts", *controls]:
                for k in sorted(set(ks)):
                    ranking.unit_set(k, None if name == "experts" else name, seed)
                    out.append((pool, lang, name, k))
    return out


def side_effect_ks(choice, ks: Sequence[int]) -> list[int]:
    """The ks at which side effects are measured: every k of ``ks`` (``True`` / ``None``: the CLI's flag left out),
    none (``False`` / an empty list) or the listed ks, sorted and once each."""
    if choice is None or choice is True:
        return sorted(set(ks))
    return sorted(set(choice or []))


def planned_passes(n_languages: int, n_pools: int, controls: Sequence[str], ks: Sequence[int],
                   apply_to: Sequence[str], retrieval_n: int, n_find: int = 0, n_contrast: int = 0,
                   side_effect_ks: Sequence[int] = (), n_perplexity: int = 50, n_prompts: int = 30,
                   new_tokens: int = 20) -> dict:
    """Forward passes the sweep needs, per sentence (finding and retrieval stop at the last decoder layer; the
    perplexity passes and generation steps also run the LM head)."""
    sets = n_languages * n_pools * (1 + len(controls))
    sides = 2 if "both" in apply_to else 1
    find = n_find * n_contrast
    base = retrieval_n * (1 + n_languages)
    steered = sets * len(set(ks)) * retrieval_n * sides
    # side effects: unsteered once per language, plus every set at each of side_effect_ks
    measured = n_languages + sets * len(set(side_effect_ks)) if side_effect_ks else 0
    return {"finding": find, "retrieval_unsteered": base, "retrieval_steered": steered,
            "perplexity": measured * n_perplexity, "generation_prompts": measured * n_prompts,
            "generation_tokens": measured * n_prompts * new_tokens,
            "sentence_passes": find + base + steered + measured * n_perplexity}


@dataclass
class SweepResult:
    """Retrieval rows, per-sentence hits and side-effect rows of a sweep.

    ``hits[(pool, language, set, k, apply_to, direction)]``: bool ``[layers, n]`` of the sentences' top-1 hits
    with the set forced; the unsteered ones under ``("", language, "base", 0, "", direction)``.
    """

    rows: list[dict] = field(default_factory=list)
    hits: dict = field(default_factory=dict)
    effects: list[dict] = field(default_factory=list)
    passes: dict = field(default_factory=lambda: {"retrieval": 0, "perplexity": 0, "generation_prompts": 0})


def _side_effects(model, tokenizer, language, config, n_perplexity, n_prompts, new_tokens, batch_size, passes):
    from evaluate.loaders import load_flores

    lo, hi = PERPLEXITY_SENTENCES
    held_out = load_flores(language, "devtest")[lo:lo + min(n_perplexity, hi - lo)]
    out = {"perplexity": perplexity(model, tokenizer, held_out, config, batch_size=max(1, batch_size // 2)),
           "n_perplexity": len(held_out),
           **generation_script_share(model, tokenizer, language, config, n_prompts, new_tokens, batch_size)}
    passes["perplexity"] += len(held_out)
    passes["generation_prompts"] += out["n_prompts"]
    return out


def sweep(model, tokenizer, rankings_by_pool: Mapping[str, Mapping], ks: Sequence[int], *,
          controls: Sequence[str] = (), apply_to=APPLY_TO, retrieval_n: int = 200, seed: int = 0,
          side_effect_ks: Sequence[int] = (), n_perplexity: int = 50, n_prompts: int = 30, new_tokens: int = 20,
          batch_size: int = 16, after_language: Callable[[SweepResult, str], None] | None = None) -> SweepResult:
    """Retrieval (and side effects at ``side_effect_ks``) for every unit set of :func:`unit_sets`.

    ``rankings_by_pool``: ``{pool: {language: ExpertRanking}}`` (:func:`pools`). Every set of a language is
    evaluated on the same ``retrieval_n`` devtest sentences, so sets can be compared sentence by sentence.
    ``after_language(result, language)`` is called when a language is done (to write partial results).
    """
    from evaluate.loaders import load_flores
    from tqdm.auto import tqdm

    modes = apply_modes(apply_to)
    lo, hi = RETRIEVAL_SENTENCES
    if not 0 < retrieval_n <= hi - lo:
        raise ValueError(f"retrieval_n: expected 1..{hi - lo} devtest sentences for retrieval, got {retrieval_n}")
    ks = sorted(set(ks))
    plan = unit_sets(rankings_by_pool, ks, controls, seed)
    languages = list(dict.fromkeys(lang for _, lang, _, _ in plan))
    result = SweepResult()
    en_texts = load_flores("en", "devtest")[lo:lo + retrieval_n]
    en_base = pooled_representations(model, tokenizer, en_texts, batch_size=batch_size)
    result.passes["retrieval"] += retrieval_n
    for lang in languages:
        src_texts = load_flores(lang, "devtest")[lo:lo + retrieval_n]
        src_base = pooled_representations(model, tokenizer, src_texts, batch_size=batch_size)
        result.passes["retrieval"] += retrieval_n
        base = {"L->en": retrieval_hits(src_base, en_base), "en->L": retrieval_hits(en_base, src_base)}
        for direction, h in base.items():
            result.hits[("", lang, "base", 0, "", direction)] = h
        before = None
        if side_effect_ks:
            before = _side_effects(model, tokenizer, lang, None, n_perplexity, n_prompts, new_tokens, batch_size,
                                   result.passes)
            result.effects.append({"pool": "", "language": lang, "set": "base", "k": 0, **before})
        for pool in dict.fromkeys(p for p, _, _, _ in plan):
            for m in modes:  # k = 0: the baseline itself
                for direction, h in base.items():
                    common = {"pool": pool, "language": lang, "set": "experts", "k": 0, "direction": direction,
                              "n": retrieval_n, "apply_to": m}
                    result.rows += ratio_rows(common, h, h, seed)
        todo = [(p, s, k) for p, lg, s, k in plan if lg == lang]
        for pool, name, k in tqdm(todo, desc=f"retrieval {lang}", disable=len(todo) < 2):
            config = rankings_by_pool[pool][lang].config(model, k, control=None if name == "experts" else name,
                                                         seed=seed)
            src = pooled_representations(model, tokenizer, src_texts, config, batch_size)
            en = pooled_representations(model, tokenizer, en_texts, config, batch_size) if "both" in modes else None
            result.passes["retrieval"] += retrieval_n * (2 if en is not None else 1)
            for m in modes:
                target = en if m == "both" else en_base
                for direction, h in (("L->en", retrieval_hits(src, target)), ("en->L", retrieval_hits(target, src))):
                    result.hits[(pool, lang, name, k, m, direction)] = h
                    common = {"pool": pool, "language": lang, "set": name, "k": k, "direction": direction,
                              "n": retrieval_n, "apply_to": m}
                    result.rows += ratio_rows(common, h, base[direction], seed)
            if k in side_effect_ks:
                after = _side_effects(model, tokenizer, lang, config, n_perplexity, n_prompts, new_tokens,
                                      batch_size, result.passes)
                result.effects.append({"pool": pool, "language": lang, "set": name, "k": k, **after,
                                       "perplexity_before": before["perplexity"],
                                       "script_share_before": before["script_share"]})
        if after_language is not None:
            after_language(result, lang)
    return result


def save_hits(hits: Mapping, path: str | Path) -> None:
    """Per-sentence hits as safetensors (uint8 ``[layers, n]`` per key ``pool|language|set|k|apply_to|direction``)."""
    from interventions.fsutil import atomic_path, save_safetensors

    tensors = {"|".join(map(str, key)): h.to(torch.uint8).contiguous() for key, h in hits.items()}
    with atomic_path(path) as tmp:
        save_safetensors(tensors, tmp, "experts_hits")


def load_hits(path: str | Path) -> dict:
    """The hits written by :func:`save_hits`."""
    from safetensors.torch import load_file

    out = {}
    for key, h in load_file(str(path)).items():
        pool, lang, name, k, mode, direction = key.split("|")
        out[(pool, lang, name, int(k), mode, direction)] = h.bool()
    return out
