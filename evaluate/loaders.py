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
