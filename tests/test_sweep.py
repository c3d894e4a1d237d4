"""Sweep and selection: tiny model with constructed items; selection rules on constructed rows."""

from __future__ import annotations

import pytest
import torch

from interventions import sweep as S
from interventions.vectors import SteeringVectors, decoder_layers
from test_vectors import char_tokenizer
from tiny_models import tiny_model


def _items():
    from evaluate.tasks import Item

    transfer = [Item(f"t/{i}", "global_mmlu_cloze", "ko", f"Question {i} is", ("a b", "c", "dd e"), gold=i % 3)
                for i in range(6)]
    local = [Item(f"l/{i}", "blend", "ko", f"Food {i}:", ("kim chi", "pizza"), local=i % 2, us=1 - i % 2)
             for i in range(4)]
    return transfer, local


def _equal_length_items():
    """Two-token candidates: choices move under steering (the shortest candidate does not always win)."""
    from evaluate.tasks import Item

    transfer = [Item(f"t/{i}", "global_mmlu_cloze", "ko", f"Question {i} is", ("ab", "cd", "ef"), gold=i % 3)
                for i in range(6)]
    local = [Item(f"l/{i}", "blend", "ko", f"Food {i}:", ("kim", "piz"), local=i % 2, us=1 - i % 2)
             for i in range(4)]
    return transfer, local


def _vectors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVectors("en_transfer_ko", torch.randn(4, 32, generator=g), [0, 1, 2, 3], torch.ones(4),
                           {"method": "mean_difference"})


def test_sweep_rows_match_an_independent_hook():
    pytest.importorskip("interventions.steer")
    from evaluate.scoring import score_items

    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, local = _items()
    vec = _vectors()
    rows = S.sweep(model, tok, vec, layers=[1, 2], coefficients=[0.0, 30.0], transfer_items=transfer,
                   localization_items=local, progress=False)
    assert [(r["layer"], r["coefficient"]) for r in rows] == [(1, 0.0), (1, 30.0), (2, 0.0), (2, 30.0)]
    for r in rows:
        if r["coefficient"] == 0.0:
            assert r["transfer_gain"] == 0.0 and r["localization_gain"] == 0.0
    # reference for (layer 2, coefficient 30): add the vector with a plain forward hook
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


def test_select_rules():
    rows = [
        {"layer": 1, "coefficient": 2.0, "transfer_gain": 0.10, "localization_gain": -0.20},
        {"layer": 2, "coefficient": 4.0, "transfer_gain": 0.05, "localization_gain": 0.00},
        {"layer": 3, "coefficient": 1.0, "transfer_gain": 0.05, "localization_gain": -0.005},
        {"layer": 4, "coefficient": 8.0, "transfer_gain": -0.02, "localization_gain": 0.30},
        {"layer": 5, "coefficient": 1.0, "transfer_gain": -0.001, "localization_gain": 0.10},
    ]
    en = S.select(rows, "en", tolerance=0.01)
    assert (en["layer"], en["coefficient"]) == (3, 1.0)  # tie on gain -> smaller coefficient; row 1 too costly
    loc = S.select(rows, "loc", tolerance=0.01)
    assert loc["layer"] == 5  # layer 4 costs 0.02 transfer > tolerance
    assert S.select(rows, "loc", tolerance=0.05)["layer"] == 4
    assert S.select(rows[:1], "en", tolerance=0.0) is None
    with pytest.raises(ValueError, match="rule"):
        S.select(rows, "both")


def test_surgical_config_saves_provenance(tmp_path):
    pytest.importorskip("interventions.config")
    from interventions.config import InterventionConfig

    model = tiny_model("llama")
    en, loc = _vectors(0), _vectors(1)
    loc.name = "loc_ko"
    cfg = S.surgical_config(model, en, {"layer": 1, "coefficient": 2.0, "transfer_gain": 0.1},
                            loc, {"layer": 3, "coefficient": 4.0, "localization_gain": 0.2},
                            provenance={"data": "extract", "languages": ["ko"]})
    cfg.save_pretrained(tmp_path / "surgical")
    back = InterventionConfig.from_pretrained(tmp_path / "surgical")
    by_name = {i.name: i for i in back.interventions}
    assert by_name["en_transfer_ko"].layer == 1 and by_name["loc_ko"].coefficient == 4.0
    assert by_name["loc_ko"].source["selection_rule"] == "loc"
    assert by_name["en_transfer_ko"].source["languages"] == ["ko"]
    torch.testing.assert_close(by_name["loc_ko"].vector, loc.vector(3))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_cache_replay_equals_full_forward(arch):
    """One recorded pass replays any grid layer (KV-cache updates included) like the steered full forward."""
    pytest.importorskip("interventions.steer")
    from evaluate.scoring import score_items
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    model, tok = tiny_model(arch), char_tokenizer()
    transfer, local = _items()  # multi-token candidates: the KV-cache continuation pass runs too
    items = transfer + local
    vec = _vectors()
    prefix = S._PrefixCache(model, [3, 1, 0])
    with prefix.record():
        base = score_items(model, tok, items, batch_size=4, progress=False)
    assert prefix.grid == [0, 1, 3] and len(prefix.outputs[3]) == len(prefix.updates) > 3  # prompt + cont. calls
    for layer in (0, 1, 3):
        for coef in (0.0, 5.0):
            cfg = InterventionConfig.for_model(model, [vec.intervention(layer, coefficient=coef)])
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


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_cached_sweep_rows_equal_reference_sweep(relative, positions):
    """Several layers (unsorted, the last one included), KV-cache continuation pass, absolute and relative."""
    pytest.importorskip("interventions.steer")
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _equal_length_items()  # multi-token candidates: the KV-cache continuation pass runs
    vec = _vectors()
    coefs = [-2.0, 0.5, 2.0] if relative else [-20.0, 0.0, 20.0, -20.0]  # 0 = baseline; a repeated cell
    kw = dict(layers=[2, 0, 3], coefficients=coefs, transfer_items=transfer, localization_items=local,
              relative=relative, positions=positions, batch_size=4, progress=False)
    cached, reference = S.cached_sweep(model, tok, vec, **kw), S.sweep(model, tok, vec, **kw)
    assert [(r["layer"], r["coefficient"]) for r in cached] == [(r["layer"], r["coefficient"]) for r in reference]
    assert cached == reference
    assert any(r["transfer_gain"] or r["localization_gain"] for r in reference)  # the grid moves scores
    if relative:
        assert [r["alpha"] for r in cached[:3]] == coefs


def test_cached_sweep_one_axis_only():
    pytest.importorskip("interventions.steer")
    model, tok = tiny_model("llama"), char_tokenizer()
    transfer, _ = _items()
    vec = _vectors()
    kw = dict(layers=[1], coefficients=[30.0], transfer_items=transfer, localization_items=[], progress=False)
    rows = S.cached_sweep(model, tok, vec, **kw)
    assert rows == S.sweep(model, tok, vec, **kw)
    assert rows[0]["localization_score"] is None and rows[0]["localization_gain"] is None


def test_cached_sweep_scores_zero_and_repeated_cells_once(monkeypatch):
    """Coefficient 0 is the baseline and a repeated cell the same computation: neither is scored again."""
    pytest.importorskip("interventions.steer")
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _equal_length_items()
    vec = _vectors()
    kw = dict(layers=[1, 1], coefficients=[0.0, 20.0, 20.0], transfer_items=transfer, localization_items=local,
              batch_size=4, progress=False)
    reference = S.sweep(model, tok, vec, **kw)
    calls = []
    original = S.evaluate_axes
    monkeypatch.setattr(S, "evaluate_axes", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert S.cached_sweep(model, tok, vec, **kw) == reference
    assert len(calls) == 2  # the recorded baseline pass + (layer 1, coefficient 20)
