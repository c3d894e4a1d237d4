"""The generations section of a report: what each variant *says*, side by side.

Numbers on the plane are log-prob margins; a reader judges steering first by the text it produces. For a
fixed, seeded sample of prompts per language (:func:`sample_prompts`: implicit-cue localization prompts, the
question without its country, and a few transfer prompts of ``fact_probe``), :func:`generate_side_by_side`
gives the greedy continuation (``do_sample=False``: deterministic) of every prompt under every variant and
marks which answer string appears in it (:func:`mark`): ``local`` / ``us`` / ``both`` / ``neither`` for a
localization prompt, ``gold`` / ``neither`` for a transfer prompt. :func:`render_generations` is the
markdown section (one table per language, prompt x variant); results.json holds the same rows.

A variant is what the evaluation builds (:class:`evaluate.plane.Variant` or a subclass): ``name``, ``model``
and ``context()``, which applies its :class:`~interventions.config.InterventionConfig` with
:func:`interventions.steer.steer` (and, for a recipe's ``base*`` variants, disables the adapter). A
:class:`Skipped` variant (its vector does not exist, e.g. the modal out-of-fold choice was "unsteered") is
not generated; its rows say why.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from .sampling import stratified_sample
from .tables import markdown_table

MARKS = ("local", "us", "both", "neither", "gold", "skipped")
TRANSFER_TASK = "fact_probe"
DEFAULT_LOCALIZATION_TASK = "locale_probe"
N_LOCAL, N_TRANSFER, MAX_NEW_TOKENS = 4, 2, 16
"""Defaults: prompts per language (localization, transfer) and new tokens per continuation."""


@dataclass(frozen=True)
class Skipped:
    """A variant that is not generated, and why (shown in the table)."""

    name: str
    reason: str


def prompt_tasks(task_names: Sequence[str]) -> list[str]:
    """The tasks a report's generations sample from: the evaluation's localization tasks (``locale_probe``
    when it has none) and ``fact_probe`` (short factual answers a continuation can contain; multiple-choice
    prompts continue with a letter, which no substring test can read)."""
    from .tasks import get_task

    local = [t for t in task_names if get_task(t).kind == "localization"]
    return [*(local or [DEFAULT_LOCALIZATION_TASK]), TRANSFER_TASK]


def _answers(item) -> dict[str, str]:
    meta = item.meta or {}
    if item.gold is not None:
        return {"gold": str(meta.get("answer") or item.candidates[item.gold]).strip()}
    return {"local": str(meta.get("local_answer") or item.candidates[item.local]).strip(),
            "us": str(meta.get("us_answer") or item.candidates[item.us]).strip()}


def sample_prompts(tasks: Sequence, languages: Sequence[str], n_local: int = N_LOCAL, n_transfer: int = N_TRANSFER,
                   seed: int = 0, split: str = "test") -> list[dict]:
    """A seeded, stratified sample of prompts per language (:func:`evaluate.sampling.stratified_sample`).

    ``tasks``: task names or :class:`~evaluate.tasks.Task` objects. Per language, ``n_local`` question groups
    of the localization tasks' implicit-cue items (pooled over those tasks) and ``n_transfer`` groups of the
    transfer tasks' cloze items; a task that has no items in a language is skipped there. Each prompt:
    ``{"id", "task", "kind", "language", "prompt", "answers"}``, answers ``{"local", "us"}`` or ``{"gold"}``; in
    (language, kind, id) order.
    """
    from .tasks import get_task

    for name, n in (("n_local", n_local), ("n_transfer", n_transfer)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name}: expected a non-negative integer number of prompts, got {n!r}")
    resolved = [get_task(t, seed=seed) if isinstance(t, str) else t for t in tasks]
    out = []
    for lang in dict.fromkeys(languages):
        for kind, n in (("localization", n_local), ("transfer", n_transfer)):
            pool = []
            for task in resolved:
                if task.kind != kind or (task.languages and lang not in task.languages):
                    continue
                pool += [it for it in task.items(lang, split=split)
                         if it.language == lang and it.cue == "implicit" and it.scoring == "cloze"]
            if not pool or n == 0:
                continue
            for it in sorted(stratified_sample(pool, n, seed=seed), key=lambda it: it.id):
                out.append({"id": it.id, "task": it.task, "kind": kind, "language": lang, "prompt": it.prompt,
                            "answers": _answers(it)})
    return out


def mark(continuation: str, answers: dict[str, str]) -> str:
    """Which answer string appears in ``continuation`` (case-insensitive substring).

    Localization (``{"local", "us"}``): ``local``, ``us``, ``both`` or ``neither``; an answer that is part of
    the other (``football`` in ``American football``) counts only where the longer one does not stand.
    Transfer (``{"gold"}``): ``gold`` or ``neither``.
    """
    text = continuation.casefold()
    if "gold" in answers:
        gold = answers["gold"].strip().casefold()
        return "gold" if gold and _pattern(gold).search(text) else "neither"
    hits = set()
    for key in sorted(("local", "us"), key=lambda k: -len(answers[k].strip())):  # the longer answer first
        a = answers[key].strip().casefold()
        if a and _pattern(a).search(text):
            hits.add(key)
            text = _pattern(a).sub("\x00", text)
    return "both" if len(hits) == 2 else next(iter(hits), "neither")


def _pattern(answer: str) -> "re.Pattern":
    """``answer`` as a substring, except that a digit may not continue a number: "4 July" is not in
    "14 July", "911" is not in "9110" (scripts without spaces keep plain substring matching)."""
    head = r"(?<!\d)" if answer[:1].isdigit() else ""
    tail = r"(?!\d)" if answer[-1:].isdigit() else ""
    return re.compile(head + re.escape(answer) + tail)


def _generate(variant, tokenizer, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``texts`` under ``variant`` in one left-padded batch."""
    import torch
    from transformers import GenerationConfig

    model = variant.model
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        pad_id = tokenizer.pad_token_id
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad
    device = next(model.parameters()).device
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=eos if eos is not None else tokenizer.eos_token_id)
    with variant.context(), torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                             generation_config=config)
    new = out[:, enc["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new]


def generate_side_by_side(variants: Sequence, tokenizer, prompts: Sequence[dict],
                          max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """One row per (prompt, variant): ``{"language", "task", "kind", "prompt_id", "prompt", "answers", "variant",
    "continuation", "mark"}`` (a :class:`Skipped` variant: ``continuation`` None, ``mark`` ``skipped`` and its
    ``note``). The prompts of one language are one left-padded batch per variant. Rows in prompt order, each
    prompt's variants in the given order; JSON-safe."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variants: each name may appear once, got {names}")
    by_language: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_language.setdefault(p["language"], []).append(i)
    cells: dict[tuple[int, str], dict] = {}
    for variant in variants:
        for indices in by_language.values():
            if isinstance(variant, Skipped):
                for i in indices:
                    cells[i, variant.name] = {"continuation": None, "mark": "skipped", "note": variant.reason}
                continue
            texts = _generate(variant, tokenizer, [prompts[i]["prompt"] for i in indices], max_new_tokens)
            for i, text in zip(indices, texts):
                cells[i, variant.name] = {"continuation": text, "mark": mark(text, prompts[i]["answers"])}
    return [{"language": p["language"], "task": p["task"], "kind": p["kind"], "prompt_id": p["id"],
             "prompt": p["prompt"], "answers": dict(p["answers"]), "variant": name, **cells[i, name]}
            for i, p in enumerate(prompts) for name in names]


def settings(task_names: Sequence[str], seed: int) -> dict:
    """What a report's generations were made with (results.json ``generations_settings``)."""
    return {"tasks": prompt_tasks(task_names), "seed": seed, "n_local": N_LOCAL, "n_transfer": N_TRANSFER,
            "max_new_tokens": MAX_NEW_TOKENS, "decoding": "greedy"}


def escape_cell(text: str) -> str:
    """``text`` as one markdown table cell: control characters shown as ``\\xNN``, HTML-escaped, ``|`` and
    ``\\`` backslash-escaped, line breaks as ``<br>``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(f"\\x{ord(c):02x}" if c != "\n" and unicodedata.category(c) == "Cc" else c for c in text)
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\n", "<br>")


def _cell(row: dict) -> str:
    if row["mark"] == "skipped":
        return "*skipped*"  # why: in the line under the table
    text = escape_cell(row["continuation"].strip()) or "*(empty)*"
    return f"{text} **[{row['mark']}]**"


def render_generations(rows: Sequence[dict], settings: dict | None = None) -> str:
    """The ``## Generations`` markdown section: per language, a table of prompts x variants (each cell the
    continuation and its mark); empty string when there are no rows."""
    if not rows:
        return ""
    s = settings or {}
    how = ", ".join(f"{k} {s[k]}" for k in ("seed", "n_local", "n_transfer", "max_new_tokens") if k in s)
    lines = ["## Generations", "",
             "Greedy continuations (no sampling: deterministic) of a seeded, stratified sample of prompts per "
             "language: implicit-cue localization prompts (the question without its country) and transfer prompts "
             f"(`{TRANSFER_TASK}`), under each variant" + (f" ({how})" if how else "") + ". Mark: **local** / "
             "**us** = the local / US answer string appears (case-insensitive; an answer inside the other counts "
             "only outside it), **both**, **neither**; transfer prompts: **gold** = the correct answer appears. A "
             "handful of prompts: this shows what the variants say; the tables above are the evidence.", ""]
    for lang in dict.fromkeys(r["language"] for r in rows):
        mine = [r for r in rows if r["language"] == lang]
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        cells = {(r["prompt_id"], r["variant"]): r for r in mine}
        table = []
        for pid in dict.fromkeys(r["prompt_id"] for r in mine):
            first = cells[pid, variants[0]]
            answers = "; ".join(f"{k}: {escape_cell(a)}" for k, a in first["answers"].items())
            table.append([f"{escape_cell(first['prompt'])} (`{escape_cell(pid)}`)", answers,
                          *(_cell(cells[pid, v]) if (pid, v) in cells else "" for v in variants)])
        lines += [f"### {lang}", "", markdown_table(["prompt", "answers", *(escape_cell(v) for v in variants)], table)]
        skipped = {r["variant"]: r.get("note") for r in mine if r["mark"] == "skipped"}
        lines += [""] + ([f"Skipped in {lang}: " + "; ".join(f"{v} ({n})" for v, n in skipped.items()) + ".", ""]
                         if skipped else [])
    return "\n".join(lines)


__all__ = ["MARKS", "Skipped", "escape_cell", "generate_side_by_side", "mark", "prompt_tasks", "render_generations",
           "sample_prompts", "settings"]
