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
    """Replaying layers <= l (KV-cache updates included) gives the steered full forward's log-probs."""
    pytest.importorskip("interventions.steer")
    from evaluate.scoring import score_items
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    model, tok = tiny_model(arch), char_tokenizer()
    transfer, local = _items()  # multi-token candidates: the KV-cache continuation pass runs too
    items = transfer + local
    vec = _vectors()
    prefix = S._PrefixCache(model, 1)
    with prefix.record():
        base = score_items(model, tok, items, batch_size=4, progress=False)
    for coef in (0.0, 5.0):
        cfg = InterventionConfig.for_model(model, [vec.intervention(1, coefficient=coef)])
        with steer(model, cfg):
            full = score_items(model, tok, items, batch_size=4, progress=False)
        with steer(model, cfg), prefix.replay():
            cached = score_items(model, tok, items, batch_size=4, progress=False)
        for f, c in zip(full, cached):
            assert c.logprob == pytest.approx(f.logprob, abs=1e-5)
        if coef == 0.0:
            for f, b in zip(full, base):
                assert f.logprob == pytest.approx(b.logprob, abs=1e-5)
        else:
            assert any(abs(f.logprob[0] - b.logprob[0]) > 1e-3 for f, b in zip(full, base))  # steering bites
    assert "forward" not in vars(decoder_layers(model)[0])  # patches removed


def test_cached_sweep_rows_equal_reference_sweep():
    pytest.importorskip("interventions.steer")
    model, tok = tiny_model("gemma3"), char_tokenizer()
    transfer, local = _items()
    vec = _vectors()
    kw = dict(layers=[0, 2], coefficients=[-20.0, 20.0], transfer_items=transfer, localization_items=local,
              batch_size=4, progress=False)
    assert S.cached_sweep(model, tok, vec, **kw) == S.sweep(model, tok, vec, **kw)
