"""Training data for the alignment methods, built only from FLORES-200 ``dev``.

Line i of every FLORES file is a translation of line i of every other, so (English, L) pairs are
aligned by line number. The last ``held_out`` lines of ``dev`` are never trained on (a
deterministic held-out slice); ``devtest`` (used for retrieval evaluation) and the evaluation
tasks' files under ``evaluate/data/`` are never read here except by :func:`find_leaks`, which
checks that no training text contains any of them.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from datasets import Dataset

from evaluate.loaders import DATA_DIR, FLORES_CODES, load_flores

LANGUAGE_NAMES = {"en": "English", "ar": "Arabic", "es": "Spanish", "id": "Indonesian", "ko": "Korean",
                  "zh": "Chinese", "el": "Greek", "fa": "Persian", "am": "Amharic"}


def parallel_sentences(languages: Sequence[str], held_out: int = 97,
                       max_sentences: int | None = None) -> dict[str, list[str]]:
    """{language: training sentences} for English and ``languages``, aligned by index.

    FLORES ``dev`` lines ``[0, 997 - held_out)`` (optionally only the first ``max_sentences``),
    minus every line that contains, in any of these languages, a FLORES ``devtest`` sentence or an
    evaluation task's text (FLORES dev and devtest share a few sentences).
    """
    langs = ("en", *languages)
    out = {}
    for lang in langs:
        lines = load_flores(lang, "dev")
        out[lang] = lines[:len(lines) - held_out]
    n = len(out["en"])
    flat = [out[lang][i] for lang in langs for i in range(n)]
    bad = {k % n for k in leaking_indices(flat, forbidden_texts(languages))}
    keep = [i for i in range(n) if i not in bad][:max_sentences]
    return {lang: [out[lang][i] for i in keep] for lang in langs}


def held_out_sentences(languages: Sequence[str], held_out: int = 97) -> dict[str, list[str]]:
    """The deterministic held-out slice: the last ``held_out`` lines of FLORES ``dev``."""
    return {lang: (load_flores(lang, "dev")[-held_out:] if held_out else []) for lang in ("en", *languages)}


def _translation_pairs(parallel: dict[str, list[str]]):
    """``(language, language name, index, English sentence, L sentence)`` for every non-English language."""
    english = parallel["en"]
    for lang, sents in parallel.items():
        if lang == "en":
            continue
        name = LANGUAGE_NAMES[lang]
        for i, (en, tgt) in enumerate(zip(english, sents)):
            yield lang, name, i, en, tgt


def sft_examples(parallel: dict[str, list[str]]) -> list[dict]:
    """Prompt/completion instruction data: L->en and en->L translation and same-language
    continuation (sentence i -> sentence i+1, both from the training slice), for every L."""
    rows = []
    for lang, name, i, en, tgt in _translation_pairs(parallel):
        rows.append({"prompt": f"Translate from {name} to English.\n{name}: {tgt}\nEnglish:",
                     "completion": f" {en}", "language": lang, "kind": "to_en", "index": i})
        rows.append({"prompt": f"Translate from English to {name}.\nEnglish: {en}\n{name}:",
                     "completion": f" {tgt}", "language": lang, "kind": "from_en", "index": i})
        if i + 1 < len(parallel[lang]):
            rows.append({"prompt": f"Continue the {name} text.\n{tgt}",
                         "completion": f" {parallel[lang][i + 1]}", "language": lang, "kind": "continuation",
                         "index": i})
    return rows


def pair_examples(parallel: dict[str, list[str]]) -> list[dict]:
    """(English, L) parallel sentence pairs for the contrastive term, with an LM text per pair
    (the en->L translation instruction, prompt + completion)."""
    rows = []
    for lang, name, i, en, tgt in _translation_pairs(parallel):
        lm_text = (f"Translate from English to {name}.\nEnglish: {en}\n{name}: {tgt}" if i % 2 == 0 else
                   f"Translate from {name} to English.\n{name}: {tgt}\nEnglish: {en}")
        rows.append({"source": en, "target": tgt, "text": lm_text, "language": lang, "index": i})
    return rows


def preference_examples(parallel: dict[str, list[str]]) -> list[dict]:
    """CLO preference pairs. For each index i and language L, two pairs:

    - prompt in English -> chosen the English response, rejected the L response (``nll`` 0);
    - prompt in L -> chosen the L response, rejected the English response (``nll`` 1: the NLL
      term applies to these chosen L responses only).

    The "question" is the first half of sentence i (in the prompt's language) and the responses
    are the second half of sentence i in English or L, so both responses continue the prompt.
    """
    rows = []
    for lang, name, i, en, tgt in _translation_pairs(parallel):
        en_head, en_tail = _split(en)
        l_head, l_tail = _split(tgt)
        rows.append({"prompt": f"Continue the English text.\n{en_head}", "chosen": f" {en_tail}",
                     "rejected": f" {l_tail}", "prompt_language": "en", "chosen_language": "en",
                     "rejected_language": lang, "nll": 0.0, "index": i})
        rows.append({"prompt": f"Continue the {name} text.\n{l_head}", "chosen": f" {l_tail}",
                     "rejected": f" {en_tail}", "prompt_language": lang, "chosen_language": lang,
                     "rejected_language": "en", "nll": 1.0, "index": i})
    return rows


def _split(sentence: str) -> tuple[str, str]:
    """Split a sentence into two halves at the whitespace nearest its middle (characters for
    scripts without spaces)."""
    mid = len(sentence) // 2
    spaces = [i for i, c in enumerate(sentence) if c == " "]
    if spaces:
        cut = min(spaces, key=lambda i: abs(i - mid))
        return sentence[:cut].strip(), sentence[cut + 1:].strip()
    return sentence[:mid], sentence[mid:]


def to_dataset(rows: list[dict], seed: int) -> Dataset:
    """A shuffled (deterministically, by ``seed``) ``datasets.Dataset``."""
    if not rows:
        raise ValueError("training data: no examples were built (check languages / max_sentences / held_out)")
    return Dataset.from_list(rows).shuffle(seed=seed)


def training_texts(rows: Iterable[dict]) -> list[str]:
    """Every string a model is trained on in ``rows`` (all string fields)."""
    keys = ("prompt", "completion", "chosen", "rejected", "source", "target", "text")
    return [row[k] for row in rows for k in keys if isinstance(row.get(k), str)]


def forbidden_texts(languages: Sequence[str] | None = None, min_chars: int = 25) -> list[str]:
    """Texts that must never be trained on: every FLORES ``devtest`` sentence (all bundled
    languages unless ``languages``) and every string of at least ``min_chars`` characters in the
    evaluation tasks' bundled files (``evaluate/data/*`` except FLORES)."""
    langs = list(FLORES_CODES) if languages is None else ["en", *languages]
    out = [s for lang in langs for s in load_flores(lang, "devtest")]
    for path in sorted(Path(DATA_DIR).rglob("*")):
        if not path.is_file() or "flores200" in path.parts or path.suffix.lower() not in _EVAL_SUFFIXES:
            continue
        out.extend(s for s in _strings_in(path) if len(s) >= min_chars)
    return out


_EVAL_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".txt"}


def _strings_in(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower()
    strings: list[str] = []

    def walk(obj):
        if isinstance(obj, str):
            strings.append(obj.strip())
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    if suffix == ".json":
        try:
            walk(json.loads(text))
            return strings
        except json.JSONDecodeError:
            pass
    if suffix == ".jsonl":
        for line in text.splitlines():
            try:
                walk(json.loads(line))
            except json.JSONDecodeError:
                strings.append(line.strip())
        return strings
    if suffix in {".csv", ".tsv"}:
        for record in csv.reader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","):
            strings.extend(cell.strip() for cell in record)
        return strings
    return [line.strip() for line in text.splitlines()]


def find_leaks(train: Sequence[str], forbidden: Iterable[str], key_chars: int = 16) -> list[str]:
    """The forbidden texts that occur (as substrings) in any training text."""
    return sorted({s for hits in _leak_hits(train, forbidden, key_chars).values() for s in hits})


def leaking_indices(train: Sequence[str], forbidden: Iterable[str], key_chars: int = 16) -> set[int]:
    """Indices of the training texts that contain any forbidden text."""
    return set(_leak_hits(train, forbidden, key_chars))


def _leak_hits(train: Sequence[str], forbidden: Iterable[str], key_chars: int) -> dict[int, set[str]]:
    # One pass over the joined corpus: each window of ``key_chars`` characters is looked up in an
    # index of the forbidden texts' prefixes; only those candidates are compared in full.
    train = list(train)
    starts, pos = [], 0
    for t in train:
        starts.append(pos)
        pos += len(t) + 1
    corpus = "\x00".join(train)
    forbidden = [s for s in dict.fromkeys(forbidden) if s]
    index: dict[str, list[str]] = {}
    hits: dict[int, set[str]] = {}
    for s in forbidden:
        if len(s) >= key_chars:
            index.setdefault(s[:key_chars], []).append(s)
        else:
            for i, t in enumerate(train):
                if s in t:
                    hits.setdefault(i, set()).add(s)
    for i in range(len(corpus) - key_chars + 1):
        candidates = index.get(corpus[i:i + key_chars])
        if candidates:
            for s in candidates:
                if corpus.startswith(s, i):
                    hits.setdefault(bisect.bisect_right(starts, i) - 1, set()).add(s)
    return hits
