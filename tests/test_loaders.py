"""Loaders of the bundled data: shapes, parallelism, and refusal of malformed files."""

import json

import pytest

from evaluate import loaders
from evaluate.loaders import (BLEND_COUNTRIES, BMLAMA_LANGUAGES, GLOBAL_MMLU_LANGUAGES, load_blend, load_bmlama,
                              load_flores, load_global_mmlu, load_locale_probe, load_xfactr_templates)


def test_flores_still_parallel():
    assert len(load_flores("ko")) == len(load_flores("en")) == 997


def test_global_mmlu_bundled_parallel():
    en = load_global_mmlu("en")
    assert len(en) == 400
    for lang in GLOBAL_MMLU_LANGUAGES:
        ds = load_global_mmlu(lang)
        assert ds["sample_id"] == en["sample_id"]
        assert set(ds["answer"]) == {"A", "B", "C", "D"}
        assert sorted(set(ds["cultural_sensitivity_label"])) == ["CA", "CS"]


def test_global_mmlu_unknown_language():
    with pytest.raises(ValueError, match="language"):
        load_global_mmlu("xx")


def _mmlu_csv(tmp_path, answer="B", drop=None):
    cols = [c for c in loaders.GLOBAL_MMLU_COLUMNS if c != drop]
    row = {"sample_id": "astronomy/test/1", "question": "Q?", "option_a": "1", "option_b": "NA",
           "option_c": "c", "option_d": "d", "answer": answer, "cultural_sensitivity_label": "CA"}
    p = tmp_path / "mmlu.csv"
    import csv
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerow({c: row.get(c, "") for c in cols})
    return p


def test_global_mmlu_file_strings_kept(tmp_path):
    ds = load_global_mmlu("en", path=_mmlu_csv(tmp_path))
    assert ds[0]["option_a"] == "1" and ds[0]["option_b"] == "NA"  # no numeric / NaN coercion


def test_global_mmlu_bad_answer_letter(tmp_path):
    with pytest.raises(ValueError, match=r"row 0.*'answer'.*A B C D"):
        load_global_mmlu("en", path=_mmlu_csv(tmp_path, answer="E"))


def test_global_mmlu_missing_column(tmp_path):
    with pytest.raises(ValueError, match=r"mmlu.csv.*missing column.*option_c"):
        load_global_mmlu("en", path=_mmlu_csv(tmp_path, drop="option_c"))


def test_global_mmlu_hub_path(monkeypatch, tmp_path):
    import datasets

    local = load_global_mmlu("en", path=_mmlu_csv(tmp_path))
    calls = []

    def fake(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = load_global_mmlu("ko", source="CohereForAI/Global-MMLU")
    assert calls == [("CohereForAI/Global-MMLU", "ko", "test")]
    assert ds[0]["sample_id"] == "astronomy/test/1"


def test_blend_bundled():
    for country in BLEND_COUNTRIES:
        ds = load_blend(country)
        assert len(ds) == 500
        assert {"ID", "question", "en_question", "annotations", "topic"} <= set(ds.column_names)
    assert set(load_blend("US")["ID"]) == set(load_blend("South_Korea")["ID"])


def test_blend_bad_annotation(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"ID": "x-1", "question": "q", "en_question": "q",
                             "annotations": [{"answers": [], "en_answers": ["a"], "count": 2}]}) + "\n")
    with pytest.raises(ValueError, match=r"b.jsonl: row 0 \(ID='x-1'\) field 'annotations'"):
        load_blend("Spain", path=p)


def test_blend_unknown_country():
    with pytest.raises(ValueError, match="country"):
        load_blend("Atlantis")


def test_bmlama_row_aligned():
    n = {lang: len(load_bmlama(lang)) for lang in BMLAMA_LANGUAGES}
    assert set(n.values()) == {3070}
    en, ko = load_bmlama("en"), load_bmlama("ko")
    assert en[2958]["Ans"] == "Havana" and ko[2958]["Ans"] == "아바나"


def _tsv(tmp_path, prompt):
    p = tmp_path / "x.tsv"
    p.write_text("Prompt\tAns\tCandidate Ans\tSubject\n" + f"{prompt}\tRome\tVenice, Rome\tMichelangelo\n")
    return p


def test_bmlama_mask_count_refused(tmp_path):
    with pytest.raises(ValueError, match=r"x.tsv: row 0 field 'Prompt'.*exactly one <mask>"):
        load_bmlama("en", path=_tsv(tmp_path, "Michelangelo died in <mask> or <mask>."))
    with pytest.raises(ValueError, match="exactly one <mask>"):
        load_bmlama("en", path=_tsv(tmp_path, "Michelangelo died in Rome."))
    assert len(load_bmlama("en", path=_tsv(tmp_path, "Michelangelo died in <mask>."))) == 1


def test_bmlama_bad_header(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("Prompt\tAnswer\n")
    with pytest.raises(ValueError, match="h.tsv: header"):
        load_bmlama("en", path=p)


def test_xfactr_templates():
    t = load_xfactr_templates()
    assert t[("P36", "zh")] == "[X]的行政中心是[Y]。"
    assert t[("P1376", "zh")] == "[X]是[Y]的首府。"


def test_locale_probe_validation(tmp_path):
    p = tmp_path / "lp.jsonl"
    row = {"concept": "capital", "language": "ko", "country": "South_Korea", "topic": "geography",
           "implicit": "우리나라의 수도는", "explicit": "대한민국의 수도는", "local": "서울", "us": "워싱턴",
           "en_implicit": "The capital of our country is", "en_local": "Seoul", "en_us": "Washington",
           "source": "test"}
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    assert len(load_locale_probe(p)) == 1
    p.write_text(json.dumps({**row, "us": ""}, ensure_ascii=False) + "\n")
    with pytest.raises(ValueError, match=r"lp.jsonl: row 0 field 'us'"):
        load_locale_probe(p)
    p.write_text(json.dumps({k: v for k, v in row.items() if k != "en_us"}, ensure_ascii=False) + "\n")
    with pytest.raises(ValueError, match=r"missing column.*en_us"):
        load_locale_probe(p)
    with pytest.raises(ValueError, match="not found"):
        load_locale_probe(tmp_path / "nope.jsonl")
