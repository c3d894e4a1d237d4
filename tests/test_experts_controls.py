"""Finding experts, controlled (issue 16): one retrieval helper (float64, no <bos>), matched controls, the sweep
that computes each unsteered pass once, and the pre-registered tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluate.experts_eval import planned_passes, pools, sweep, unit_sets
from evaluate.experts_verdict import control_tests, headline, side_effect_price
from evaluate.retrieval import pooled_representations, retrieval_hits, retrieval_top1
from interventions.components import decoder_layers, decoder_stack
from interventions.expert_ap import StreamingAP
from interventions.experts import CONTROLS, ExpertRanking
from tiny_models import char_tokenizer, tiny_model

# ----------------------------------------------------------------------------------------------------------
# Retrieval: one helper, float64, pooling without <bos>
# ----------------------------------------------------------------------------------------------------------


def test_retrieval_against_a_hand_computed_example():
    src = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tgt = torch.tensor([[2.0, 0.1], [0.0, 3.0], [0.5, 1.0]])
    # cosines by hand: row 0 -> (0.9988, 0, 0.4472): 0 (hit); row 1 -> (0.7416, 0.7071, 0.9487): 2 (miss);
    # row 2 -> (0.0499, 1, 0.8944): 1 (miss)
    assert retrieval_hits(src, tgt).tolist() == [True, False, False]
    assert retrieval_top1(src, tgt) == pytest.approx(1 / 3)
    # the other way: tgt 0 -> src 0 (hit); tgt 1 -> src 2 (cos 1, miss); tgt 2 -> src 1 (0.9487 > 0.8944, miss)
    assert retrieval_hits(tgt, src).tolist() == [True, False, False]
    assert retrieval_hits(tgt[[0, 2, 1]], src).tolist() == [True, True, True]
    # batched over leading dimensions (layers): the same answer per layer
    stacked = retrieval_hits(torch.stack([src, tgt[[0, 2, 1]]]), torch.stack([tgt, src]))
    assert stacked.tolist() == [[True, False, False], [True, True, True]]
    with pytest.raises(ValueError, match="src, tgt"):
        retrieval_hits(src, tgt[:2])


def test_retrieval_is_float64():
    # rows share a large offset: the cosines differ by ~1e-9, below float32's resolution but not float64's
    x = torch.tensor([[1e4, -1.0], [1e4, 0.0], [1e4, 1.0]], dtype=torch.float32)
    assert retrieval_top1(x, x) == 1.0
    s = torch.nn.functional.normalize(x, dim=-1)
    float32_hits = ((s @ s.T).argmax(1) == torch.arange(3)).float().mean()
    assert float32_hits < 1.0  # the same computation in float32 cannot tell the rows apart


def _block_outputs(model, ids):
    seen = []
    handles = [layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
               for layer in decoder_layers(model)]
    with torch.no_grad():
        decoder_stack(model)(input_ids=ids)
    for h in handles:
        h.remove()
    return torch.stack([s[0] for s in seen])  # [layers, t, hidden]


def test_pooling_drops_bos_even_when_its_state_is_huge():
    from interventions.vectors import sentence_representations

    model, tok = tiny_model("gemma3"), char_tokenizer()
    texts = ["hello there world", "a cat"]
    plain = pooled_representations(model, tok, texts, batch_size=2)
    # by hand: the mean of every layer's output over the tokens after <bos>
    for i, text in enumerate(texts):
        ids = tok([text], return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id
        torch.testing.assert_close(plain[:, i], _block_outputs(model, ids)[:, 1:].mean(1), atol=1e-5, rtol=1e-5)

    # the last layer's <bos> state made huge (as gemma's attention sink): nothing else changes, so the pooled
    # vectors must not change either, while a pooling that keeps <bos> is swamped
    def huge_bos(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 0] = 1e6  # one text per batch: no padding, <bos> first
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for i, text in enumerate(texts):
        handle = decoder_layers(model)[-1].register_forward_hook(huge_bos)
        try:
            huge = pooled_representations(model, tok, [text])
            kept = sentence_representations(model, tok, [text], progress=False, exclude_special=False)
        finally:
            handle.remove()
        torch.testing.assert_close(huge[:, 0], plain[:, i], atol=1e-5, rtol=1e-5)
        assert kept[-1, 0].abs().max() > 1e4  # <bos> kept: the huge state dominates the mean


# ----------------------------------------------------------------------------------------------------------
# Matched controls
# ----------------------------------------------------------------------------------------------------------


def _ranking(k_max=12, width=40, layers=4, seed=0, components=("mlp_hidden",)):
    g = torch.Generator().manual_seed(seed)
    blocks = [(c, layer, width) for c in components for layer in range(layers)]
    n = width * len(blocks)
    ap = torch.rand(n, generator=g, dtype=torch.float64)
    ap[torch.randperm(n, generator=g)[:k_max]] += 1.0  # some clear experts, spread over blocks
    order = torch.argsort(ap, descending=True, stable=True)[:k_max]
    unit_medians = torch.randn(n, generator=g)
    variance = torch.rand(n, generator=g, dtype=torch.float64)
    variance[order] += 10.0  # experts carry the most language variance: the control must skip them anyway
    return ExpertRanking("ko", blocks, ap, order, unit_medians[order], {"language": "ko"}, unit_medians, variance)


def _histogram(ranking, units):
    out = {}
    for comp, layer, _ in ranking.locate(units):
        out[(comp, layer)] = out.get((comp, layer), 0) + 1
    return out


@pytest.mark.parametrize("k", [1, 5, 12])
def test_random_control_matches_layers_and_count_is_seeded_and_has_no_expert(k):
    r = _ranking()
    experts = r.unit_set(k)
    control = r.unit_set(k, "random", seed=3)
    assert len(control) == len(experts) == k
    assert _histogram(r, control) == _histogram(r, experts)
    assert not set(control.tolist()) & set(r.order.tolist())  # no unit the ranking lists, at any k
    assert torch.equal(control, r.unit_set(k, "random", seed=3))
    others = [r.unit_set(k, "random", seed=s) for s in range(4, 9)]
    assert any(not torch.equal(control, o) for o in others)


def test_variance_control_is_the_highest_variance_non_experts_per_layer():
    r = _ranking()
    k = 9
    control = r.unit_set(k, "variance")
    assert _histogram(r, control) == _histogram(r, r.unit_set(k))
    ranked = set(r.order.tolist())
    assert not set(control.tolist()) & ranked
    chosen = set(control.tolist())
    for b, (comp, layer, width) in enumerate(r.blocks):
        block = range(b * width, (b + 1) * width)
        picked = [u for u in block if u in chosen]
        rest = [u for u in block if u not in chosen and u not in ranked]
        if picked:
            assert min(float(r.language_variance[u]) for u in picked) >= max(float(r.language_variance[u])
                                                                              for u in rest)


def test_controls_are_forced_like_the_experts(tmp_path):
    r = _ranking()
    for control in CONTROLS:
        ivs = r.interventions(5, control=control, seed=1)
        assert {iv.role for iv in ivs} == {"control"} and {iv.language for iv in ivs} == {"ko"}
        assert all(iv.source["control"] == control and iv.source["k"] == 5 for iv in ivs)
        for iv in ivs:
            flat = sum(w for _, _, w in r.blocks[:iv.layer]) + iv.units
            torch.testing.assert_close(iv.values, r.unit_medians[flat])  # each unit to its own median
    experts = r.interventions(5)
    assert {iv.role for iv in experts} == {"experts"}
    for iv in experts:
        flat = sum(w for _, _, w in r.blocks[:iv.layer]) + iv.units
        torch.testing.assert_close(iv.values, r.unit_medians[flat])
    with pytest.raises(ValueError, match="control"):
        r.unit_set(5, "shuffled")


def test_control_refuses_a_block_without_enough_non_experts():
    r = _ranking(k_max=12, width=4, layers=3)
    with pytest.raises(ValueError, match="units outside the ranked experts"):
        r.unit_set(12, "random")


def test_ranking_restricted_to_a_component_and_saved(tmp_path):
    r = _ranking(components=("mlp_hidden", "attention_heads"))
    heads = r.restrict("attention_heads")
    assert heads.components == ["attention_heads"] and heads.average_precision.numel() == 4 * 40
    offset = 4 * 40
    best = torch.argsort(r.average_precision[offset:], descending=True, stable=True)[:12]
    assert torch.equal(heads.order, best)
    torch.testing.assert_close(heads.medians, r.unit_medians[offset + best])
    assert _histogram(heads, heads.unit_set(6, "random")) == _histogram(heads, heads.unit_set(6))
    heads.save(tmp_path / "ranking")
    again = ExpertRanking.load(tmp_path / "ranking")
    torch.testing.assert_close(again.language_variance, heads.language_variance)
    assert torch.equal(again.unit_set(6, "random", 2), heads.unit_set(6, "random", 2))
    old = ExpertRanking("ko", r.blocks, r.average_precision, r.order, r.medians)  # saved before controls
    with pytest.raises(ValueError, match="find the experts again"):
        old.unit_set(3, "variance")


def test_between_language_variance_is_exact():
    g = np.random.default_rng(0)
    x = g.normal(size=(90, 7)).astype(np.float32)
    groups = g.integers(0, 3, 90)
    x[groups == 1, :3] += 2.0
    acc = StreamingAP(3, bins=16)
    for s in range(0, 90, 8):
        acc.update(torch.from_numpy(x[s:s + 8]), groups[s:s + 8])
    means = np.stack([x[groups == j].astype(np.float64).mean(0) for j in range(3)])
    w = np.bincount(groups) / len(groups)
    expected = (w[:, None] * (means - (w[:, None] * means).sum(0)) ** 2).sum(0)
    np.testing.assert_allclose(acc.group_means().numpy(), means, rtol=1e-6)
    np.testing.assert_allclose(acc.between_group_variance().numpy(), expected, rtol=1e-6)
    assert expected[:3].min() > expected[3:].max()


# ----------------------------------------------------------------------------------------------------------
# The sweep: unsteered passes once, every set measured on the same sentences, tests and verdicts
# ----------------------------------------------------------------------------------------------------------

WORDS = {"en": "the cat number {} sat", "ko": "zzqq xx {} qqzz", "es": "el gato numero {}"}


@pytest.fixture
def corpus(monkeypatch):
    data = {lang: [w.format(i) for i in range(1012)] for lang, w in WORDS.items()}
    monkeypatch.setattr("evaluate.loaders.load_flores", lambda lang, split="dev": data[lang])
    return data


def test_sweep_computes_each_unsteered_pass_once(corpus):
    from evaluate.contrasts import flores_experts

    model, tok = tiny_model("gemma3"), char_tokenizer()
    rankings = flores_experts(model, tok, ["en", "ko", "es"], targets=["ko", "es"], n=12, k_max=4, bins=32,
                              components=["mlp_hidden", "attention_heads"], batch_size=6, progress=False)
    by_pool = pools(rankings, separate=True)
    assert list(by_pool) == ["mlp_hidden", "attention_heads"]
    assert len(unit_sets(by_pool, [2, 4], ["random", "variance"])) == 2 * 2 * 3 * 2
    seen = []
    handle = decoder_stack(model).register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw.get("input_ids") if "input_ids" in kw else a[0]).shape[0]), with_kwargs=True)
    try:
        result = sweep(model, tok, by_pool, [2, 4], controls=["random", "variance"], retrieval_n=6, batch_size=6)
    finally:
        handle.remove()
    plan = planned_passes(2, 2, ["random", "variance"], [2, 4], ["source", "both"], 6)
    assert sum(seen) == plan["sentence_passes"] == result.passes["retrieval"] == 6 * 3 + 2 * 2 * 3 * 2 * 12
    keys = set(result.hits)
    assert ("mlp_hidden", "ko", "variance", 4, "source", "en->L") in keys
    assert all(h.shape == (4, 6) and h.dtype == torch.bool for h in result.hits.values())
    tests = control_tests(result.hits, "random", n_boot=200)
    assert len(tests) == 2 * 2 * 2 * 2 * 2  # pools x apply_to x k x direction x summary
    assert all(t["p_holm"] >= t["p_value"] and t["languages"] == ["es", "ko"] for t in tests)


def _hits(experts_hit: float, control_hit: float, n=40, layers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lang in ("ar", "ko"):
        for name, p in (("experts", experts_hit), ("random", control_hit)):
            for direction in ("L->en", "en->L"):
                out[("mlp_hidden", lang, name, 10, "both", direction)] = torch.rand(layers, n, generator=g) < p
    return out


def test_pooled_test_and_verdicts():
    clear = control_tests(_hits(0.9, 0.1), "random", n_boot=500)
    assert len(clear) == 4 and all(t["diff"] > 0.5 and t["p_holm"] < 0.05 for t in clear)
    assert all(t["verdict"].startswith("experts raise retrieval beyond a matched random control by +")
               for t in clear)
    assert all(c["verdict"].startswith("experts raise") for t in clear for c in t["per_language"].values())
    lines = headline(clear)
    assert len(lines) == 2 * 3 and "pooled over ar, ko" in lines[0]  # two directions, each pooled + 2 languages
    null = control_tests(_hits(0.5, 0.5, seed=1), "random", n_boot=500)
    assert all(t["verdict"].startswith("experts do not raise") or t["p_holm"] < 0.05 for t in null)
    assert sum(t["verdict"].startswith("experts do not raise") for t in null) >= 3
    worse = control_tests(_hits(0.1, 0.9), "random", n_boot=500)
    assert all(t["verdict"].startswith("experts lower retrieval below") for t in worse)


def test_side_effect_price():
    effects = [{"pool": "", "language": "ko", "set": "base", "k": 0, "perplexity": 10.0, "script_share": 0.9}]
    for lang, ratio in (("ko", 2.0), ("ar", 8.0)):
        effects.append({"pool": "mlp_hidden", "language": lang, "set": "experts", "k": 10, "perplexity": 10 * ratio,
                        "perplexity_before": 10.0, "script_share": 0.5, "script_share_before": 0.9})
    (row,) = side_effect_price(effects)
    assert row["perplexity_ratio"] == pytest.approx(4.0)  # geometric mean of 2 and 8
    assert row["script_share_change"] == pytest.approx(-0.4)


def test_report_end_to_end_on_a_tiny_model(corpus, tmp_path):
    from evaluate.contrasts import flores_experts
    from evaluate.experts_eval import load_hits
    from evaluate.experts_report import run_report, save_sets
    from interventions.config import InterventionConfig

    model, tok = tiny_model("gemma3"), char_tokenizer()
    rankings = flores_experts(model, tok, ["en", "ko"], n=12, k_max=3, bins=32, batch_size=6, progress=False)
    by_pool = pools(rankings)
    saved = save_sets(model, by_pool, 3, tmp_path, ["random"], seed=0)
    assert [r["path"] for r in saved] == ["ko/experts_k3", "ko/random_k3"]
    control = InterventionConfig.from_pretrained(tmp_path / "ko" / "random_k3", model=model)
    assert {iv.role for iv in control.interventions} == {"control"}
    report = run_report(model, tok, by_pool, [3], tmp_path, controls=["random"], retrieval_n=5, side_effect_ks=[3],
                        n_prompts=2, new_tokens=2, n_perplexity=3, n_boot=100, batch_size=4)
    assert report["passes"] == {"retrieval": 5 * 2 + 2 * 10, "perplexity": 3 * 3, "generation_prompts": 2 * 3}
    text = (tmp_path / "REPORT.md").read_text()
    assert "Experts vs a matched random control (primary family, Holm over 8 tests)" in text
    assert "## Side-effect price" in text and (tmp_path / "retrieval_ko.png").is_file()
    tests = json.loads((tmp_path / "tests.json").read_text())
    assert len(tests["families"]["random"]) == 8 and tests["side_effect_price"]
    hits = load_hits(tmp_path / "hits.safetensors")
    assert set(hits) == set(report["hits"]) and all(torch.equal(hits[k], report["hits"][k]) for k in hits)


# ----------------------------------------------------------------------------------------------------------
# The one command
# ----------------------------------------------------------------------------------------------------------

SWEEP = ["report", "--languages", "ar", "es", "id", "ko", "zh", "--ks", "5", "10", "20", "50", "--apply-to", "source",
         "both", "--components", "mlp_hidden", "attention_heads", "--per-component", "--controls", "random",
         "variance", "--n", "200", "--retrieval-n", "200"]


def test_sweep_command_dry_run_counts_passes_and_loads_nothing(tmp_path, capsys, monkeypatch):
    from evaluate import experts as experts_cli
    from interventions import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded on a dry run"))
    assert experts_cli.main([*SWEEP, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    passes = json.loads(capsys.readouterr().out)
    # 5 languages x 2 pools x (experts + 2 controls) x 4 ks x 200 sentences x 2 sides (L and en, both modes)
    assert passes["retrieval_steered"] == 5 * 2 * 3 * 4 * 200 * 2
    assert passes["finding"] == 200 * 6 and passes["retrieval_unsteered"] == 200 * 6
    assert passes["perplexity"] == (5 + 5 * 2 * 3 * 4) * 50 and passes["generation_prompts"] == (5 + 120) * 30
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--controls", "random", "random"], "--controls: expected no duplicates"),
    (["--controls", "shuffled"], "--controls"),
    (["--side-effect-ks", "7"], "--side-effect-ks: [7] not among --ks"),
    (["--retrieval-n", "600"], "--retrieval-n: expected at most 500"),
    (["--n-boot", "0"], "--n-boot"),
    (["--languages", "en", "ko"], "--languages: expected languages other than 'en'"),
])
def test_sweep_command_refuses_bad_flags_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    from evaluate import experts as experts_cli
    from interventions import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded before flags were checked"))
    with pytest.raises(SystemExit) as exit_:
        experts_cli.main([*SWEEP, "--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_find_command_saves_experts_and_controls_and_reports(corpus, tmp_path, capsys, monkeypatch):
    from evaluate import experts as experts_cli
    from interventions import models
    from interventions.config import InterventionConfig

    model = tiny_model("gemma3")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: char_tokenizer())
    out = tmp_path / "out"
    assert experts_cli.main(["find", "--language", "ko", "--contrast", "en", "ko", "es", "--k", "2", "--n", "12",
                             "--bins", "32", "--retrieval-n", "5", "--controls", "random", "variance",
                             "--seed", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| mlp_hidden | ko | random | both | 2 |" in text
    for name in ("experts", "random", "variance"):
        config = InterventionConfig.from_pretrained(out / "ko" / f"{name}_k2", model=model)
        assert sum(iv.units.numel() for iv in config.interventions) == 2
    assert ExpertRanking.load(out / "ko" / "ranking").language_variance is not None
    assert (out / "tests.json").is_file() and (out / "REPORT.md").is_file()


def test_sweep_command_refuses_unmatchable_controls_before_finding(tmp_path, capsys, monkeypatch):
    from evaluate import experts as experts_cli
    from interventions import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_model("gemma3"))
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: char_tokenizer())
    monkeypatch.setattr("evaluate.contrasts.find_experts", lambda *a, **k: pytest.fail("finding ran"))
    out = tmp_path / "out"
    assert experts_cli.main(["report", "--ks", "5", "40", "--controls", "random", "--out", str(out)]) == 2
    assert "--ks: a mlp_hidden block has 64 units" in capsys.readouterr().err and not out.exists()


def test_sweep_command_refuses_old_rankings_for_controls(tmp_path, capsys, monkeypatch):
    from evaluate import experts as experts_cli
    from interventions import models

    r = _ranking(width=64)
    ExpertRanking("ko", r.blocks, r.average_precision, r.order, r.medians).save(tmp_path / "old" / "ko" / "ranking")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_model("gemma3"))
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: char_tokenizer())
    out = tmp_path / "out"
    assert experts_cli.main(["report", "--languages", "ko", "--ks", "5", "--controls", "variance", "--rankings",
                             str(tmp_path / "old"), "--out", str(out)]) == 2
    assert "--rankings: ranking of ko: no language_variance" in capsys.readouterr().err and not out.exists()
