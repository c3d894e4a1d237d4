"""Measure a model on the locale_probe set: does it prefer the local answer over the US one?

    python benchmarks/check_locale_probe.py [--model gemma-3-270m] [--languages ko zh es id ar]
                                            [--batch-size 16] [--out results.json] [--lengths-only]

For every row and cue (``implicit`` and ``explicit`` prompts in the language L, and the English
control ``en_implicit``), the two candidates are scored as
``log P(candidate | prompt) = sum of the candidate tokens' log-probabilities``, where a candidate is
separator + answer (no separator for Chinese prompts, one space otherwise) and the tokens come from
tokenising prompt + candidate with the prompt's own tokens as the prefix. When the tokenizer merges
across the prompt/candidate boundary (the prompt's tokens are not a prefix of the joint
tokenisation) the candidate is tokenised on its own and appended; such rows are counted as
``boundary_merges``. A row is *degenerate* for a cue when the two candidates give the same token ids
or one candidate's ids are a prefix of the other's (then the shorter always wins).

Reported per language and cue: ``localization_share`` = share of rows with
log P(local) > log P(us), its n, a Wilson 95% interval, and the mean margin
log P(local) - log P(us). Expected for a model that localizes: implicit and explicit well above
0.5 in L, English control low (the English "our country" defaults to the US).

Length bias (printed first, tokenizer only; ``--lengths-only`` stops there without loading the model):
per language and cue, the share of rows where the local answer is *shorter* than the US one and the share
where the US answer is shorter, in candidate tokens (as scored: in context of the prompt) and in
characters. A summed log-probability favours the shorter candidate, so a set where one side is shorter
much more often than the other rewards a "fewer tokens" heuristic.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "evaluate" / "data" / "locale_probe" / "locale_probe.jsonl"
LANGUAGES = ("ko", "zh", "es", "id", "ar")
CUES = ("implicit", "explicit", "english")
NO_SEPARATOR = {"zh", "ja"}


def load_rows(path: Path = DATA) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
    return rows


def cue_fields(row: dict, cue: str) -> tuple[str, str, str, str]:
    """(prompt, local answer, us answer, separator) of one row under one cue."""
    if cue == "english":
        return row["en_implicit"], row["en_local"], row["en_us"], " "
    sep = "" if row["language"] in NO_SEPARATOR else " "
    return row[cue], row["local"], row["us"], sep


def encode(tokenizer, prompt: str, candidate: str) -> tuple[list[int], list[int], bool]:
    """Prompt ids, candidate ids, and whether the joint tokenisation merged across the boundary."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + candidate)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids):], False
    return prompt_ids, tokenizer(candidate, add_special_tokens=False)["input_ids"], True


def degenerate(a: list[int], b: list[int]) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@torch.no_grad()
def score_sequences(model, pad_id: int, seqs: list[tuple[list[int], list[int]]],
                    batch_size: int) -> list[float]:
    """Summed log-prob of each candidate given its prompt; right-padded batches, logits only where scored."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    result = [0.0] * len(seqs)
    for s in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch"):
        idx = order[s:s + batch_size]
        ids = [seqs[i][0] + seqs[i][1] for i in idx]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)] = torch.tensor(x)
            attn[r, : len(x)] = 1
        hidden = decoder(input_ids=input_ids, attention_mask=attn, use_cache=False).last_hidden_state
        for r, i in enumerate(idx):
            p, c = seqs[i]
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            logits = head(hidden[r, pos]).float()
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            result[i] = float(logp[torch.arange(len(c)), torch.tensor(c)].sum())
    return result


def length_bias(tokenizer, rows: list[dict]) -> dict:
    """{language: {cue: {tokens: {local_shorter, us_shorter, equal}, chars: {...}, n}}} (shares of rows)."""
    out: dict = defaultdict(dict)
    groups = defaultdict(list)
    for row in rows:
        for cue in ("implicit", "english"):
            prompt, local, us, sep = cue_fields(row, cue)
            n_tok = [len(encode(tokenizer, prompt, sep + a)[1]) if tokenizer is not None else None
                     for a in (local, us)]
            groups[(row["language"], cue)].append((n_tok, [len(local), len(us)]))
    for (lang, cue), recs in groups.items():  # rows' order: implicit before english
        n = len(recs)
        entry = {"n": n}
        for unit, k in (("tokens", 0), ("chars", 1)):
            pairs = [r[k] for r in recs]
            if any(p[0] is None for p in pairs):
                continue
            entry[unit] = {"local_shorter": sum(a < b for a, b in pairs) / n,
                           "us_shorter": sum(b < a for a, b in pairs) / n,
                           "equal": sum(a == b for a, b in pairs) / n}
        out[lang][cue] = entry
    return dict(out)


def length_table(bias: dict) -> str:
    lines = ["| language | cue | n | local shorter (tokens) | US shorter (tokens) | local shorter (chars) | "
             "US shorter (chars) |", "|---|---|---|---|---|---|---|"]
    for lang in [*LANGUAGES, *sorted(set(bias) - set(LANGUAGES))]:
        for cue, e in bias.get(lang, {}).items():
            t, c = e.get("tokens", {}), e["chars"]
            tok = (f"{t['local_shorter']:.2f} | {t['us_shorter']:.2f}" if t else "n/a | n/a")
            lines.append(f"| {lang} | {'L implicit' if cue == 'implicit' else 'English control'} | {e['n']} | "
                         f"{tok} | {c['local_shorter']:.2f} | {c['us_shorter']:.2f} |")
    return "\n".join(lines)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (centre - half, centre + half)


def measure(model, tokenizer, rows: list[dict], batch_size: int = 16) -> tuple[list[dict], dict]:
    """Per-row results and the per-(language, cue) summary."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs, keys = [], []
    per_row = []
    for row in rows:
        for cue in CUES:
            prompt, local, us, sep = cue_fields(row, cue)
            p_l, c_l, m_l = encode(tokenizer, prompt, sep + local)
            p_u, c_u, m_u = encode(tokenizer, prompt, sep + us)
            rec = {"concept": row["concept"], "language": row["language"], "cue": cue,
                   "local_tokens": len(c_l), "us_tokens": len(c_u),
                   "boundary_merge": m_l or m_u, "degenerate": degenerate(c_l, c_u)}
            per_row.append(rec)
            keys.append(len(per_row) - 1)
            seqs += [(p_l, c_l), (p_u, c_u)]
    scores = score_sequences(model, pad_id, seqs, batch_size)
    for j, k in enumerate(keys):
        rec = per_row[k]
        rec["logp_local"], rec["logp_us"] = scores[2 * j], scores[2 * j + 1]
        rec["margin"] = rec["logp_local"] - rec["logp_us"]
        rec["local_wins"] = rec["margin"] > 0
    summary: dict = defaultdict(dict)
    groups = defaultdict(list)
    for rec in per_row:
        groups[(rec["language"], rec["cue"])].append(rec)
    for (lang, cue), recs in sorted(groups.items()):
        k = sum(r["local_wins"] for r in recs)
        lo, hi = wilson(k, len(recs))
        summary[lang][cue] = {"localization_share": k / len(recs), "n": len(recs), "ci95": [lo, hi],
                              "mean_margin": sum(r["margin"] for r in recs) / len(recs),
                              "boundary_merges": sum(r["boundary_merge"] for r in recs),
                              "degenerate": sum(r["degenerate"] for r in recs)}
    return per_row, dict(summary)


def markdown_table(summary: dict) -> str:
    lines = ["| language | implicit (L) | explicit (L) | English control | n |",
             "|---|---|---|---|---|"]
    for lang in LANGUAGES:
        if lang not in summary:
            continue
        cells = []
        for cue in CUES:
            s = summary[lang][cue]
            cells.append(f"{s['localization_share']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]")
        lines.append(f"| {lang} | " + " | ".join(cells) + f" | {summary[lang]['implicit']['n']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--languages", nargs="+", default=list(LANGUAGES))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write per-row results + summary as JSON")
    ap.add_argument("--lengths-only", action="store_true",
                    help="print the length-bias table (tokenizer only) and stop before loading the model")
    args = ap.parse_args(argv)

    from interventions.models import load_model, load_tokenizer

    rows = [r for r in load_rows(args.data) if r["language"] in args.languages]
    if not rows:
        raise ValueError(f"{args.data}: no rows for languages {args.languages}")
    tokenizer = load_tokenizer(args.model)
    bias = length_bias(tokenizer, rows)
    print("Length bias (share of rows where that answer has fewer tokens / characters):")
    print(length_table(bias))
    if args.lengths_only:
        return {"length_bias": bias}
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    per_row, summary = measure(model, tokenizer, rows, args.batch_size)
    print(markdown_table(summary))
    for lang in summary:
        for cue, s in summary[lang].items():
            print(f"{lang:3s} {cue:9s} share={s['localization_share']:.3f} n={s['n']} "
                  f"margin={s['mean_margin']:+.2f} boundary_merges={s['boundary_merges']} "
                  f"degenerate={s['degenerate']}")
    bad = [r for r in per_row if r["degenerate"]]
    for r in bad:
        print(f"DEGENERATE {r['language']} {r['concept']} {r['cue']}")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "summary": summary, "length_bias": bias,
                                        "rows": per_row},
                                       ensure_ascii=False, indent=1))
    return summary


if __name__ == "__main__":
    main()
