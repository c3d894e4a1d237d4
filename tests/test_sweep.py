"""Sweep, KL cost and selection: tiny models with constructed items; the selection rule on constructed cells."""

from __future__ import annotations

import pytest
import torch

from evaluate import sweep as S
from interventions.config import InterventionConfig
from interventions.prefix_cache import PrefixCache
from interventions.steer import steer
from interventions.vectors import SteeringVectors, decoder_layers
from tiny_models import char_tokenizer, tiny_model

NEUTRAL = ["The river runs to the sea.", "Birds fly south in winter", "Seven is a number.", "Ok"]


def _items():
    from evaluate.tasks import Item

    transfer = [Item(f"t/{i}", "global_mmlu_cloze", "ko", f"Question {i} is", ("a b", "c", "dd e"), gold=i % 3,
                     group=f"q{i // 2}") for i in range(6)]
    local = [Item(f"l/{i}", "blend", "ko", f"Food {i}:", ("kim chi", "pizza"), local=i % 2, us=1 - i % 2,
                  group=f"c{i}") for i in range(4)]
    return transfer, local


def _equal_length_items():
    """Two-token candidates: choices move under steering (the shortest candidate does not always win)."""
    from evaluate.tasks import Item

    transfer = [Item(f"t/{i}", "global_mmlu_cloze", "ko", f"Question {i} is", ("ab", "cd", "ef"), gold=i % 3)
                for i in range(6)]
    local = [Item(f"l/{i}", "blend", "ko", f"Food {i}:", ("kim", "piz"), local=i % 2, us=1 - i % 2)
             for i in range(4)]
    return transfer, local


def _vectors(seed=0, positions=None):
    g = torch.Generator().manual_seed(seed)
    return SteeringVectors("en_transfer_ko", torch.randn(4, 32, generator=g), [0, 1, 2, 3], torch.ones(4),
                           {"method": "mean_difference"}, positions=positions)


def test_sweep_rows_match_an_independent_hook():
    from evaluate.scoring import score_items

    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, local = _items()
    vec = _vectors()  # mean_difference: coefficient == alpha
    rows = S.sweep(model, tok, vec, layers=[1, 2], transfer_items=transfer, localization_items=local,
                   alphas=[0.0, 30.0], positions="all", progress=False)
    assert [(r["layer"], r["alpha"], r["coefficient"]) for r in rows] == [(1, 0.0, 0.0), (1, 30.0, 30.0),
                                                                         (2, 0.0, 0.0), (2, 30.0, 30.0)]
    for r in rows:
        if r["alpha"] == 0.0:
            assert r["transfer_gain"] == 0.0 and r["localization_margin_gain"] == 0.0 and r["kl"] is None
    # reference for (layer 2, alpha 30): add the vector with a plain forward hook
    handle = decoder_layers(model)[2].register_forward_hook(
        lambda m, a, out: (out[0] + 30.0 * vec.vector(2),) + tuple(out[1:]) if isinstance(out, tuple)
        else out + 30.0 * vec.vector(2))
    try:
        t = score_items(model, tok, transfer, progress=False)
        l = score_items(model, tok, local, progress=False)
    finally:
        handle.remove()
    row = rows[3]
    assert row["transfer_score"] == pytest.approx(sum(s.choice == it.gold for s, it in zip(t, transfer)) / 6)
    assert row["localization_score"] == pytest.approx(sum(s.choice == it.local for s, it in zip(l, local)) / 4)
    margins = [s.logprob[it.local] - s.logprob[it.us] for s, it in zip(l, local)]
    assert row["localization_margin"] == pytest.approx(sum(margins) / 4, abs=1e-5)
    gold = [s.logprob[it.gold] - max(x for j, x in enumerate(s.logprob) if j != it.gold) for s, it in zip(t, transfer)]
    assert row["transfer_margin"] == pytest.approx(sum(gold) / 6, abs=1e-5)


def test_default_grid_starts_at_zero():
    assert S.ALPHAS[0] == 0.0 and 1.0 in S.ALPHAS and max(S.ALPHAS) == 2.0


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_alpha_zero_is_the_unsteered_model_bit_for_bit(positions):
    """Logits under an alpha = 0 intervention equal the base logits exactly (torch.equal), and KL is exactly 0."""
    model, tok = tiny_model("gemma3"), char_tokenizer()
    vec = _vectors()
    batch = tok(NEUTRAL, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = model(**batch).logits
    for layer in (0, 2):
        inter = vec.intervention(layer, alpha=0.0, positions=positions)
        assert inter.coefficient == 0.0 and inter.source["alpha"] == 0.0
        with steer(model, InterventionConfig.for_model(model, [inter])), torch.no_grad():
            steered = model(**batch).logits
            logp = S.next_token_logprobs(model, tok, NEUTRAL, batch_size=3)
        assert torch.equal(steered, base)
        assert S.kl_divergence(logp, S.next_token_logprobs(model, tok, NEUTRAL, batch_size=3)) == 0.0
    strong = vec.intervention(2, alpha=5.0, positions=positions)
    with steer(model, InterventionConfig.for_model(model, [strong])):
        pushed = S.next_token_logprobs(model, tok, NEUTRAL)
    assert S.kl_divergence(pushed, S.next_token_logprobs(model, tok, NEUTRAL)) > 1e-4


def test_next_token_logprobs_padding_free():
    """A left-padded batch gives each text's unpadded next-token distribution."""
    model, tok = tiny_model("llama"), char_tokenizer()
    batched = S.next_token_logprobs(model, tok, NEUTRAL, batch_size=4)
    alone = torch.cat([S.next_token_logprobs(model, tok, [t]) for t in NEUTRAL])
    assert batched.shape == (4, 128)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="neutral_texts"):
        S.next_token_logprobs(model, tok, "one string")


@pytest.mark.parametrize("cached", [True, False])
def test_alpha_zero_row_equals_the_baseline(cached):
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _equal_length_items()
    run = S.cached_sweep if cached else S.sweep
    rows, records = run(model, tok, _vectors(), [1, 3], transfer, local, alphas=[0.0, 4.0], neutral_texts=NEUTRAL,
                        batch_size=4, progress=False, per_item=True)
    base = S.evaluate_axes(model, tok, transfer, local, batch_size=4)
    for row in rows:
        if row["alpha"] == 0.0:
            assert row["kl"] == 0.0
            assert all(row[k] == base[k] for k in base) and all(row[f"base_{k}"] == base[k] for k in base)
            assert all(row[k] == 0.0 for k in row if k.endswith("_gain"))
        else:
            assert row["kl"] > 0.0
    zero = {(r["layer"], r["item_id"]): (r["margin"], r["correct"]) for r in records if r["alpha"] == 0.0}
    assert len(zero) == 2 * 10 and {v for (l, _), v in zero.items() if l == 1} == {v for (l, _), v in zero.items()
                                                                                   if l == 3}
    assert {r["axis"] for r in records} == {"transfer", "localization"} and len(records) == 4 * 10


def test_choose_alpha_zero_when_every_gain_is_negative():
    cells = [{"layer": 2, "alpha": 1.0, "gain": -0.1, "other": 0.0, "kl": 0.1},
             {"layer": 6, "alpha": 0.5, "gain": 0.0, "other": 0.0, "kl": 0.05},
             {"layer": 4, "alpha": 0.0, "gain": 0.0, "other": 0.0, "kl": 0.0}]
    chosen = S.choose(cells, "gain", "other")
    assert chosen == {"layer": None, "alpha": 0.0, "coefficient": 0.0, "gain": 0.0, "other": 0.0, "kl": 0.0,
                      "steered": False}
    assert S.choose([], "gain", "other")["steered"] is False
    # a positive gain that breaks the other axis' tolerance or the KL budget does not qualify either
    bad = [{"layer": 1, "alpha": 1.0, "gain": 0.3, "other": -0.2, "kl": 0.1},
           {"layer": 2, "alpha": 1.0, "gain": 0.3, "other": 0.0, "kl": 2.0}]
    assert S.choose(bad, "gain", "other", tolerance=0.1, max_kl=1.0)["steered"] is False
    assert S.choose(bad, "gain", "other", tolerance=0.25, max_kl=1.0)["layer"] == 1
    assert S.choose(bad, "gain", "other", tolerance=0.1, max_kl=None)["layer"] == 2


def test_choose_ties_smaller_alpha_then_kl_then_seeded_draw():
    cells = [{"layer": 3, "alpha": 2.0, "gain": 0.2, "other": 0.0, "kl": 0.1},
             {"layer": 9, "alpha": 1.0, "gain": 0.2, "other": 0.0, "kl": 0.3},
             {"layer": 6, "alpha": 1.0, "gain": 0.2, "other": 0.0, "kl": 0.2}]
    assert (S.choose(cells, "gain", "other")["layer"], S.choose(cells, "gain", "other")["alpha"]) == (6, 1.0)
    # full ties: a seeded draw, not the earlier (or later) layer every time
    tied = [{"layer": l, "alpha": 1.0, "gain": 0.2, "other": 0.0, "kl": 0.1} for l in (3, 6, 9, 12)]
    picks = [S.choose(tied, "gain", "other", seed=s)["layer"] for s in range(40)]
    assert picks == [S.choose(tied[::-1], "gain", "other", seed=s)["layer"] for s in range(40)]  # order-free
    assert len(set(picks)) == 4


def test_choose_bad_input():
    cells = [{"layer": 1, "alpha": 1.0, "gain": 0.2, "other": 0.0}]
    with pytest.raises(ValueError, match="no kl"):
        S.choose(cells, "gain", "other", max_kl=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        S.choose(cells, "gain", "other", tolerance=-0.1)


def test_select_on_sweep_rows():
    rows = [
        {"vector": "v", "layer": 1, "alpha": 0.5, "transfer_margin_gain": 0.10, "localization_margin_gain": -0.20,
         "transfer_gain": 0.1, "localization_gain": 0.0, "kl": 0.1},
        {"vector": "v", "layer": 3, "alpha": 0.5, "transfer_margin_gain": 0.05, "localization_margin_gain": -0.005,
         "transfer_gain": 0.0, "localization_gain": 0.0, "kl": 0.1},
        {"vector": "v", "layer": 5, "alpha": 1.0, "transfer_margin_gain": -0.01, "localization_margin_gain": 0.3,
         "transfer_gain": 0.0, "localization_gain": 0.25, "kl": 0.4},
    ]
    en = S.select(rows, "en", tolerance=0.01)
    assert (en["layer"], en["alpha"], en["steered"]) == (3, 0.5, True)  # layer 1 costs too much localization
    assert S.select(rows, "loc", tolerance=0.0)["steered"] is False  # costs transfer margin
    assert S.select(rows, "loc", tolerance=0.05)["layer"] == 5
    assert S.select(rows, "loc", tolerance=0.05, max_kl=0.2)["steered"] is False  # over the KL budget
    assert S.select(rows, "loc", tolerance=0.05, max_kl=0.2)["vector"] == "v"
    assert S.select(rows, "en", measure="score")["layer"] == 1
    with pytest.raises(ValueError, match="rule"):
        S.select(rows, "both")
    with pytest.raises(ValueError, match="measure"):
        S.select(rows, "en", measure="accuracy")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_cache_replay_equals_full_forward(arch):
    """One recorded pass replays any grid layer (KV-cache updates included) like the steered full forward."""
    from evaluate.scoring import score_items

    model, tok = tiny_model(arch), char_tokenizer()
    transfer, local = _items()  # multi-token candidates: the KV-cache continuation pass runs too
    items = transfer + local
    vec = _vectors()
    prefix = PrefixCache(model, [3, 1, 0])
    with prefix.record():
        base = score_items(model, tok, items, batch_size=4, progress=False)
    assert prefix.grid == [0, 1, 3] and len(prefix.outputs[3]) == len(prefix.updates) > 3  # prompt + cont. calls
    for layer in (0, 1, 3):
        for coef in (0.0, 5.0):
            cfg = InterventionConfig.for_model(model, [vec.intervention(layer, coefficient=coef, positions="all")])
            with steer(model, cfg):
                full = score_items(model, tok, items, batch_size=4, progress=False)
            with steer(model, cfg), prefix.replay(layer):
                cached = score_items(model, tok, items, batch_size=4, progress=False)
            for f, c in zip(full, cached):
                assert c.logprob == pytest.approx(f.logprob, abs=1e-5)
            if coef == 0.0:
                for f, b in zip(full, base):
                    assert f.logprob == pytest.approx(b.logprob, abs=1e-5)
            else:
                assert any(abs(f.logprob[0] - b.logprob[0]) > 1e-3 for f, b in zip(full, base))  # steering bites
    assert all("forward" not in vars(m) for m in decoder_layers(model))  # patches removed
    with pytest.raises(ValueError, match="not recorded"):
        prefix.replay(2)
    with pytest.raises(RuntimeError, match="does not match the recorded pass"), prefix.replay(1):
        score_items(model, tok, items + items, batch_size=4, progress=False)


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_cached_sweep_rows_equal_reference_sweep(positions):
    """Several layers (unsorted, the last one included), KV-cache continuation pass, neutral-text KL, records."""
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _equal_length_items()  # multi-token candidates: the KV-cache continuation pass runs
    vec = _vectors()
    kw = dict(layers=[2, 0, 3], transfer_items=transfer, localization_items=local, alphas=[-20.0, 0.0, 20.0, -20.0],
              neutral_texts=NEUTRAL, positions=positions, batch_size=4, progress=False, per_item=True)
    cached, reference = S.cached_sweep(model, tok, vec, **kw), S.sweep(model, tok, vec, **kw)
    assert [(r["layer"], r["alpha"]) for r in cached[0]] == [(r["layer"], r["alpha"]) for r in reference[0]]
    assert cached == reference
    assert all(r["positions"] == positions for r in cached[0])
    assert any(r["transfer_gain"] or r["localization_gain"] for r in reference[0])  # the grid moves scores


def test_sweep_positions_default_to_the_vectors():
    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, _ = _items()
    rows = S.cached_sweep(model, tok, _vectors(positions="last"), [1], transfer, [], alphas=[1.0], progress=False)
    assert rows[0]["positions"] == "last"


def test_cached_sweep_one_axis_only():
    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, _ = _items()
    vec = _vectors()
    kw = dict(layers=[1], transfer_items=transfer, localization_items=[], alphas=[30.0], progress=False)
    rows = S.cached_sweep(model, tok, vec, **kw)
    assert rows == S.sweep(model, tok, vec, **kw)
    assert rows[0]["localization_score"] is None and rows[0]["localization_margin_gain"] is None
    assert rows[0]["kl"] is None


def test_cached_sweep_scores_zero_and_repeated_cells_once(monkeypatch):
    """alpha 0 is the baseline and a repeated cell the same computation: neither is scored again."""
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _equal_length_items()
    vec = _vectors()
    kw = dict(layers=[1, 1], transfer_items=transfer, localization_items=local, alphas=[0.0, 20.0, 20.0],
              neutral_texts=NEUTRAL, batch_size=4, progress=False)
    reference = S.sweep(model, tok, vec, **kw)
    calls = []
    original = S._measure
    monkeypatch.setattr(S, "_measure", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert S.cached_sweep(model, tok, vec, **kw) == reference
    assert len(calls) == 2  # the recorded baseline pass + (layer 1, alpha 20)


def test_sweep_bad_input():
    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, local = _items()
    with pytest.raises(ValueError, match="alphas"):
        S.cached_sweep(model, tok, _vectors(), [1], transfer, local, alphas=[float("nan")], progress=False)
    with pytest.raises(ValueError, match="neutral_texts"):
        S.sweep(model, tok, _vectors(), [1], transfer, local, neutral_texts="one text", progress=False)
    with pytest.raises(ValueError, match="transfer_items or localization_items"):
        S.sweep(model, tok, _vectors(), [1], [], [], progress=False)
