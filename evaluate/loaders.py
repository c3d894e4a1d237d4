"""Loaders for the bundled benchmark files, all through ``datasets``.

Language codes are ISO 639-1 (``en ar es id ko zh el fa am``) everywhere in the library;
this module maps them to each data set's own codes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(str(files("evaluate").joinpath("data")))

FLORES_CODES = {
    "en": "eng_Latn", "ar": "arb_Arab", "es": "spa_Latn", "id": "ind_Latn", "ko": "kor_Hang",
    "zh": "zho_Hans", "el": "ell_Grek", "fa": "pes_Arab", "am": "amh_Ethi",
}
FLORES_SPLITS = ("dev", "devtest")


def _unquote_flores(line: str) -> str:
    # Some FLORES files carry CSV-style quoting: "He said ""hello"" ..." -> He said "hello" ...
    if len(line) >= 2 and line[0] == '"' and line[-1] == '"' and '""' in line:
        return line[1:-1].replace('""', '"')
    return line


@lru_cache(maxsize=64)
def _flores(language: str, split: str) -> tuple[str, ...]:
    from datasets import load_dataset

    if language not in FLORES_CODES:
        raise ValueError(f"language: FLORES-200 is bundled for {sorted(FLORES_CODES)}, got {language!r}")
    if split not in FLORES_SPLITS:
        raise ValueError(f"split: expected one of {FLORES_SPLITS}, got {split!r}")
    path = DATA_DIR / "flores200" / split / f"{FLORES_CODES[language]}.{split}"
    ds = load_dataset("text", data_files=str(path), split="train", keep_linebreaks=False)
    return tuple(_unquote_flores(t) for t in ds["text"])


def load_flores(language: str, split: str = "dev") -> list[str]:
    """Sentences of FLORES-200 ``split`` ("dev": 997, "devtest": 1012) in ``language``.

    Line i of every language is the translation of line i of every other language.
    """
    return list(_flores(language, split))


# --------------------------------------------------------------------------------------------
# Global-MMLU-Lite, BLEnD, BMLAMA, X-FACTR templates, locale_probe
# --------------------------------------------------------------------------------------------

GLOBAL_MMLU_LANGUAGES = ("en", "ar", "es", "id", "ko", "zh")
GLOBAL_MMLU_COLUMNS = (
    "sample_id", "subject", "subject_category", "question", "option_a", "option_b", "option_c", "option_d",
    "answer", "required_knowledge", "time_sensitive", "reference", "culture", "region", "country",
    "cultural_sensitivity_label", "is_annotated",
)
GLOBAL_MMLU_REQUIRED = ("sample_id", "question", "option_a", "option_b", "option_c", "option_d", "answer",
                        "cultural_sensitivity_label")

# BLEnD country -> (local language, Hub split code of nayeon212/BLEnD)
BLEND_COUNTRIES = {
    "South_Korea": ("ko", "KR"), "China": ("zh", "CN"), "Spain": ("es", "ES"), "Mexico": ("es", "MX"),
    "Indonesia": ("id", "ID"), "Algeria": ("ar", "DZ"), "US": ("en", "US"), "UK": ("en", "GB"),
    "Greece": ("el", "GR"), "Iran": ("fa", "IR"), "Ethiopia": ("am", "ET"),
}
BLEND_REQUIRED = ("ID", "question", "en_question", "annotations")

BMLAMA_LANGUAGES = ("en", "ar", "es", "id", "ko", "zh")
BMLAMA_COLUMNS = ("Prompt", "Ans", "Candidate Ans", "Subject")

LOCALE_PROBE_REQUIRED = ("concept", "language", "country", "implicit", "explicit", "local", "us",
                         "en_implicit", "en_local", "en_us")


def _require_columns(ds, required, where: str):
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {ds.column_names}")


def _string_features(columns):
    from datasets import Features, Value

    return Features({c: Value("string") for c in columns})


def load_global_mmlu(language: str, source: str | None = None, path: str | Path | None = None):
    """Global-MMLU(-Lite) rows of ``language`` as a ``datasets.Dataset``.

    Default: the bundled Global-MMLU-Lite test split (400 rows = 200 CA + 200 CS per language).
    ``source``: a Hub dataset id (e.g. "CohereForAI/Global-MMLU" or "CohereForAI/Global-MMLU-Lite"),
    loaded as ``load_dataset(source, language, split="test")``. ``path``: a CSV file of the same columns.
    Whatever the origin, the rows are validated the same way (columns present, answer in A-D).
    """
    from datasets import load_dataset

    if source is not None:
        ds = load_dataset(source, language, split="test")
        where = f"{source}[{language}]"
    else:
        if path is None:
            if language not in GLOBAL_MMLU_LANGUAGES:
                raise ValueError(f"language: Global-MMLU-Lite is bundled for {list(GLOBAL_MMLU_LANGUAGES)}, "
                                 f"got {language!r} (name a Hub dataset with source=...)")
            path = DATA_DIR / "global-mmlu-lite" / f"{language}.csv"
        where = str(path)
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in GLOBAL_MMLU_REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing}; found {header}")
        ds = load_dataset("csv", data_files=str(path), split="train", keep_default_na=False,
                          features=_string_features(header))
    _require_columns(ds, GLOBAL_MMLU_REQUIRED, where)
    for i, row in enumerate(ds):
        if str(row["answer"]).strip() not in ("A", "B", "C", "D"):
            raise ValueError(f"{where}: row {i} (sample_id={row['sample_id']!r}) field 'answer': "
                             f"expected one of A B C D, got {row['answer']!r}")
    return ds


def load_blend(country: str, source: str | None = None, path: str | Path | None = None):
    """BLEnD short-answer annotations for ``country`` as a ``datasets.Dataset``.

    One row per question ID: ID, topic, question (local language), en_question,
    annotations [{answers (local), en_answers, count}], idks. Default: the bundled JSONL
    (converted from upstream ``data/annotations/{Country}_data.json``). ``source``: a Hub id
    such as "nayeon212/BLEnD", loaded as ``load_dataset(source, "annotations", split=<country code>)``.
    """
    from datasets import load_dataset

    if country not in BLEND_COUNTRIES:
        raise ValueError(f"country: BLEnD countries are {sorted(BLEND_COUNTRIES)}, got {country!r}")
    if source is not None:
        ds = load_dataset(source, "annotations", split=BLEND_COUNTRIES[country][1])
        if "ID" not in ds.column_names and "id" in ds.column_names:
            ds = ds.rename_column("id", "ID")
        where = f"{source}[annotations/{BLEND_COUNTRIES[country][1]}]"
    else:
        path = path or DATA_DIR / "blend" / "annotations" / f"{country}.jsonl"
        where = str(path)
        ds = load_dataset("json", data_files=str(path), split="train")
    _require_columns(ds, BLEND_REQUIRED, where)
    for i, row in enumerate(ds):
        anns = row["annotations"]
        if not isinstance(anns, list):
            raise ValueError(f"{where}: row {i} (ID={row['ID']!r}) field 'annotations': expected a list")
        for a in anns:
            if not isinstance(a, dict) or not a.get("answers") or a.get("en_answers") is None \
                    or not isinstance(a.get("count"), int):
                raise ValueError(f"{where}: row {i} (ID={row['ID']!r}) field 'annotations': each entry needs "
                                 f"non-empty 'answers', 'en_answers' and an integer 'count', got {a!r}")
    return ds


def load_bmlama(language: str, path: str | Path | None = None):
    """BMLAMA-53 facts in ``language`` (3,070 rows, row i parallel across languages) as a Dataset.

    Columns: Prompt (one ``<mask>``), Ans, Candidate Ans (", "-joined, gold last), Subject, plus ``row``.
    Rows with a mask count other than one are refused.
    """
    from datasets import load_dataset

    if path is None:
        if language not in BMLAMA_LANGUAGES:
            raise ValueError(f"language: BMLAMA-53 is bundled for {list(BMLAMA_LANGUAGES)}, got {language!r}")
        path = DATA_DIR / "bmlama" / f"{language}.tsv"
    where = str(path)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    if tuple(header) != BMLAMA_COLUMNS:
        raise ValueError(f"{where}: header must be {list(BMLAMA_COLUMNS)} (tab-separated), got {header}")
    import csv

    ds = load_dataset("csv", data_files=str(path), split="train", delimiter="\t", quoting=csv.QUOTE_NONE,
                      keep_default_na=False, features=_string_features(BMLAMA_COLUMNS))
    ds = ds.add_column("row", list(range(len(ds))))
    for i, row in enumerate(ds):
        if row["Prompt"].count("<mask>") != 1:
            raise ValueError(f"{where}: row {i} field 'Prompt': expected exactly one <mask>, "
                             f"got {row['Prompt'].count('<mask>')} in {row['Prompt']!r}")
        if not row["Ans"] or not row["Candidate Ans"]:
            raise ValueError(f"{where}: row {i}: empty 'Ans' or 'Candidate Ans'")
    return ds


def load_xfactr_templates(path: str | Path | None = None) -> dict[tuple[str, str], str]:
    """X-FACTR human templates: {(relation id, language): template with [X] and [Y]}."""
    from datasets import load_dataset

    path = path or DATA_DIR / "xfactr" / "TREx_prompts.csv"
    ds = load_dataset("csv", data_files=str(path), split="train", keep_default_na=False)
    if "pid" not in ds.column_names:
        raise ValueError(f"{path}: missing column 'pid'")
    langs = [c for c in ds.column_names if c not in ("pid", "relation")]
    out: dict[tuple[str, str], str] = {}
    for row in ds:
        for lang in langs:
            if row[lang]:
                out.setdefault((row["pid"], lang), str(row[lang]))
    return out


def load_locale_probe(path: str | Path | None = None):
    """The project's locale probe (JSON lines, one concept x language per line) as a Dataset."""
    from datasets import load_dataset

    path = Path(path or DATA_DIR / "locale_probe" / "locale_probe.jsonl")
    if not path.exists():
        raise ValueError(f"{path}: locale_probe data file not found")
    ds = load_dataset("json", data_files=str(path), split="train")
    _require_columns(ds, LOCALE_PROBE_REQUIRED, str(path))
    for i, row in enumerate(ds):
        for col in LOCALE_PROBE_REQUIRED:
            if not isinstance(row[col], str) or not row[col].strip():
                raise ValueError(f"{path}: row {i} field {col!r}: expected a non-empty string, got {row[col]!r}")
        if row["local"].strip() == row["us"].strip():
            raise ValueError(f"{path}: row {i} ({row['language']}/{row['concept']}): 'local' equals 'us'")
    return ds
