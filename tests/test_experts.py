"""Finding experts: streaming AP exactness, bounded memory, padding, the set-kind directory, forced units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BatchEncoding

from evaluate.contrasts import flores_experts
from interventions.experts import (ExpertRanking, StreamingAP, average_precision_exact, iter_unit_responses,
                                   unit_modules, unit_widths)
from tiny_models import tiny_model


class ByteTokenizer:
    """A minimal left-padding tokenizer for the tiny models: BOS=1, pad=0, bytes mapped into 3..127."""

    pad_token_id, bos_token_id = 0, 1
    padding_side = "left"

    def encode(self, text):
        return [1] + [3 + b % 125 for b in text.encode("utf-8")]

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=False, max_length=None,
                 return_special_tokens_mask=False):
        ids = [self.encode(t)[: max_length or None] for t in texts]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([[0] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        enc = {"input_ids": input_ids, "attention_mask": mask}
        if return_special_tokens_mask:
            enc["special_tokens_mask"] = (input_ids <= 2).long()
        return BatchEncoding(enc)


def _sklearn_style_reference():
    # Hand-computed: scores 0.9(+) 0.8(-) 0.7(+) 0.6(-): AP = 1/2 * 1 + 1/2 * 2/3
    return np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]), 0.5 + 0.5 * 2 / 3


def test_exact_ap_reference_values():
    s, y, ap = _sklearn_style_reference()
    assert average_precision_exact(s, y) == pytest.approx(ap)
    # ties form one threshold: all tied -> AP = prevalence
    assert average_precision_exact(np.ones(4), np.array([1, 0, 0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_ap_matches_exact(seed):
    rng = np.random.default_rng(seed)
    n, units, groups = 2000, 40, 4
    g = rng.integers(0, groups, n)
    shift = rng.normal(0, 1.5, units)
    x = rng.normal(0, 1, (n, units)) + (g == 2)[:, None] * shift[None]
    x[:, :4] = rng.exponential(1, (n, 4)) + (g == 2)[:, None] * 0.5  # skewed units
    acc = StreamingAP(groups, bins=1024)
    for start in range(0, n, 128):
        acc.update(torch.tensor(x[start:start + 128]), g[start:start + 128])
    approx = acc.average_precision(2).numpy()
    exact = np.array([average_precision_exact(x[:, u], g == 2) for u in range(units)])
    err = np.abs(approx - exact)
    assert err.mean() < 1e-3 and err.max() < 3e-3, (err.mean(), err.max())
    assert np.argsort(-approx)[0] == np.argsort(-exact)[0]
    # several positive groups at once
    both = acc.average_precision([1, 2]).numpy()
    exact_both = np.array([average_precision_exact(x[:, u], (g == 1) | (g == 2)) for u in range(units)])
    assert np.abs(both - exact_both).max() < 3e-3
    # medians from the histogram
    med = acc.median(2, torch.arange(units)).numpy()
    assert np.abs(med - np.median(x[g == 2], 0)).max() < 0.02


def test_streaming_ap_memory_is_bounded():
    rng = np.random.default_rng(0)
    sizes = []
    for n in (100, 5000):
        acc = StreamingAP(3, bins=64)
        for start in range(0, n, 100):
            acc.update(torch.tensor(rng.normal(size=(100, 20))), rng.integers(0, 3, 100))
        sizes.append(acc.nbytes)
        assert int(acc.group_sizes().sum()) == n
    assert sizes[0] == sizes[1]


def test_streaming_ap_rejects_bad_input():
    acc = StreamingAP(2, bins=8)
    with pytest.raises(ValueError, match="groups"):
        acc.update(torch.zeros(3, 4), [0, 1, 2])
    acc.update(torch.zeros(3, 4), [0, 1, 1])
    with pytest.raises(ValueError, match="units"):
        acc.update(torch.zeros(3, 5), [0, 1, 1])
    with pytest.raises(ValueError, match="n_groups"):
        StreamingAP(1)


@pytest.mark.parametrize("arch", ["gemma3", "llama", "gpt2"])
def test_responses_ignore_padding_and_special_tokens(arch):
    model, tok = tiny_model(arch), ByteTokenizer()
    comps = ["mlp_hidden", "attention_heads"]
    texts = ["hello there world", "hi"]
    batched = next(iter(iter_unit_responses(model, tok, texts, comps, batch_size=2, progress=False)))
    alone = torch.cat([next(iter(iter_unit_responses(model, tok, [t], comps, batch_size=1, progress=False)))
                       for t in texts])
    assert batched.shape == (2, sum(unit_widths(model, comps)))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    # by hand: the max over non-special tokens of the down-projection input, layer 0
    _, _, module = unit_modules(model, ["mlp_hidden"])[0]
    seen = {}
    handle = module.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    with torch.no_grad():
        model(torch.tensor([tok.encode("hi")]))
    handle.remove()
    torch.testing.assert_close(alone[1, : seen["h"].shape[-1]], seen["h"][0, 1:].amax(0))


def test_find_save_load_and_forced_units(tmp_path, monkeypatch):
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    corpus = {"en": [f"the cat number {i} sat" for i in range(12)],
              "ko": [f"zzqq xx {i} qqzz" for i in range(12)],
              "es": [f"el gato numero {i}" for i in range(12)]}
    monkeypatch.setattr("evaluate.loaders.load_flores", lambda lang, split="dev": corpus[lang])
    model, tok = tiny_model("gemma3"), ByteTokenizer()
    rankings = flores_experts(model, tok, ["en", "ko", "es"], n=12, k_max=10, bins=64, batch_size=5,
                              progress=False)
    assert set(rankings) == {"ko", "es"}
    ko = rankings["ko"]
    assert ko.average_precision.shape == (4 * 64,)  # 4 layers x intermediate 64
    assert float(ko.average_precision[ko.order[0]]) == pytest.approx(float(ko.average_precision.max()))
    assert float(ko.average_precision.max()) > 0.9  # the ko sentences are trivially separable

    ko.save(tmp_path / "ranking")
    again = ExpertRanking.load(tmp_path / "ranking")
    torch.testing.assert_close(again.average_precision, ko.average_precision)
    assert again.top(7)[0][0] == "mlp_hidden"

    config = ko.config(model, 7)
    assert sum(iv.units.numel() for iv in config.interventions) == 7
    config.save_pretrained(tmp_path / "experts")
    loaded = InterventionConfig.from_pretrained(tmp_path / "experts", model=model)
    assert [iv.kind for iv in loaded.interventions] == ["set"] * len(config.interventions)
    for a, b in zip(config.interventions, loaded.interventions):
        assert torch.equal(a.units, b.units) and torch.equal(a.values, b.values)
        assert (a.component, a.layer, a.source["language"]) == (b.component, b.layer, "ko")

    # the forced units really take their values at every position, and only while steering
    modules = {(c, i): m for c, i, m in unit_modules(model, ["mlp_hidden"])}
    seen = {}

    def watch():  # registered after steer's own hooks, so it sees what the down projection really receives
        return [modules[("mlp_hidden", iv.layer)].register_forward_pre_hook(
            lambda m, a, layer=iv.layer: seen.__setitem__(layer, a[0].detach().clone()))
            for iv in loaded.interventions]

    ids = torch.tensor([tok.encode("some other text")])
    with steer(model, loaded), torch.no_grad():
        handles = watch()
        model(ids)
    for h in handles:
        h.remove()
    forced = dict(seen)
    seen.clear()
    handles = watch()
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    for iv in loaded.interventions:
        got = forced[iv.layer][..., iv.units]
        torch.testing.assert_close(got, iv.values.expand_as(got))
        assert not torch.allclose(seen[iv.layer][..., iv.units], iv.values.expand_as(got))


def test_ranking_k_out_of_range():
    r = ExpertRanking("ko", [("mlp_hidden", 0, 4)], torch.rand(4, dtype=torch.float64), torch.tensor([2, 0]),
                      torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="k"):
        r.top(3)
    assert [(c, layer, u.tolist()) for c, layer, u, _ in r.top(2)] == [("mlp_hidden", 0, [0, 2])]


def test_script_share():
    from evaluate.experts_eval import script_share
    from evaluate.retrieval import retrieval_hits

    assert script_share("안녕 hi", "ko") == pytest.approx(2 / 4)
    assert script_share("hola señor", "es") == 1.0
    assert np.isnan(script_share("123 !!", "zh"))
    src = torch.eye(3)[None]
    assert retrieval_hits(src, src).all() and not retrieval_hits(src, src.flip(1)).all()


@pytest.mark.gemma
@pytest.mark.slow
def test_gemma_experts_end_to_end(gemma):
    from evaluate.experts_eval import pools, sweep

    model, tok = gemma
    rankings = flores_experts(model, tok, ["en", "ko"], n=12, k_max=50, bins=256, progress=False)
    ko = rankings["ko"]
    assert ko.average_precision.shape == (18 * 2048,)
    assert float(ko.average_precision[ko.order[49]]) > 0.9  # Hangul vs Latin: easy experts exist
    rows = sweep(model, tok, pools(rankings), [50], apply_to="both", retrieval_n=12).rows
    # per (k, direction): 18 layers + the pre-registered summaries "mean" and "middle"
    assert {r["k"] for r in rows} == {0, 50} and len(rows) == 2 * 2 * (18 + 2)
    assert sum(r["layer"] == "middle" for r in rows) == 4 and sum(r["layer"] == "mean" for r in rows) == 4
    before = [r for r in rows if r["k"] == 0]
    assert all(r["ratio"] == pytest.approx(1.0) for r in before)


# ----------------------------------------------------------------------------------------------------------
# attention_heads: a steerable unit component (input of the attention output projection)
# ----------------------------------------------------------------------------------------------------------

def _wide_heads_gemma3():
    """A tiny Gemma 3 whose heads x head_dim (4 x 16 = 64) differs from the hidden size (32), as in gemma-3-270m."""
    import transformers as tf

    cfg = tf.Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                              query_pre_attn_scalar=16, max_position_embeddings=256, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _model(arch):
    return _wide_heads_gemma3() if arch == "wide_gemma3" else tiny_model(arch)


@pytest.mark.parametrize("arch,module_path,width", [
    ("wide_gemma3", "model.layers.2.self_attn.o_proj", 64), ("llama", "model.layers.2.self_attn.o_proj", 32),
    ("gpt2", "transformer.h.2.attn.c_proj", 32), ("gpt_neox", "gpt_neox.layers.2.attention.dense", 32)])
def test_attention_heads_resolve_to_the_output_projection_input(arch, module_path, width):
    from interventions.components import INPUT_HOOK, component_width, resolve

    model = _model(arch)
    where = resolve(model, "attention_heads", 2)
    assert (where.module_path, where.hook_type, where.width) == (module_path, INPUT_HOOK, width)
    assert component_width(model, "attention_heads") == width
    assert [(c, i) for c, i, _ in unit_modules(model, ["attention_heads"])] == [("attention_heads", i)
                                                                                for i in range(4)]


@pytest.mark.parametrize("arch", ["wide_gemma3", "llama", "gpt2", "gpt_neox", "phi3"])
def test_attention_heads_set_config_saved_and_loaded_reproduces_hand_written_hook(arch, tmp_path):
    from interventions.components import resolve, unwrap
    from interventions.config import InterventionConfig, SetIntervention
    from interventions.steer import steer

    model = _model(arch)
    where = resolve(model, "attention_heads", 2)
    units, values = torch.tensor([0, 5, where.width - 1]), torch.tensor([2.0, -1.5, 0.75])
    config = InterventionConfig.for_model(model, [SetIntervention("heads", "attention_heads", 2, units, values)])
    config.save_pretrained(tmp_path / "heads")
    loaded = InterventionConfig.from_pretrained(tmp_path / "heads", model=model)
    assert loaded.interventions[0].kind == "set" and loaded.interventions[0].component == "attention_heads"

    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [0, 0, 1, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])

    def logits():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    base = logits()

    def force(module, args):  # the definition: overwrite those coordinates of the o_proj input everywhere
        h = args[0].clone()
        h[..., units] = values.to(h.dtype)
        return (h,) + tuple(args[1:])

    handle = unwrap(model).get_submodule(where.module_path).register_forward_pre_hook(force)
    expected = logits()
    handle.remove()
    assert not torch.allclose(expected, base, atol=1e-4), "forcing the units must change the logits"
    with steer(model, loaded):
        steered = logits()
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=0)
    assert torch.equal(logits(), base), "logits after the context must be bit-identical"


def test_attention_heads_experts_found_saved_and_applied(tmp_path, monkeypatch):
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    corpus = {"en": [f"the cat number {i} sat" for i in range(12)],
              "ko": [f"zzqq xx {i} qqzz" for i in range(12)]}
    monkeypatch.setattr("evaluate.loaders.load_flores", lambda lang, split="dev": corpus[lang])
    model, tok = _wide_heads_gemma3(), ByteTokenizer()
    ko = flores_experts(model, tok, ["en", "ko"], n=12, k_max=20, components=["mlp_hidden", "attention_heads"],
                        bins=64, batch_size=6, progress=False)["ko"]
    assert ko.average_precision.shape == (4 * 48 + 4 * 64,)
    heads_only = flores_experts(model, tok, ["en", "ko"], n=12, k_max=6, components=["attention_heads"], bins=64,
                                batch_size=6, progress=False)["ko"]
    config = heads_only.config(model, 6)
    assert {iv.component for iv in config.interventions} == {"attention_heads"}
    config.save_pretrained(tmp_path / "experts")
    loaded = InterventionConfig.from_pretrained(tmp_path / "experts", model=model)
    modules = dict(((c, i), m) for c, i, m in unit_modules(model, ["attention_heads"]))
    seen = {}
    ids = torch.tensor([tok.encode("some other text")])
    with steer(model, loaded), torch.no_grad():
        handles = [modules[("attention_heads", iv.layer)].register_forward_pre_hook(
            lambda m, a, layer=iv.layer: seen.__setitem__(layer, a[0].detach().clone()))
            for iv in loaded.interventions]
        model(ids)
    for h in handles:
        h.remove()
    for iv in loaded.interventions:
        got = seen[iv.layer][..., iv.units]
        torch.testing.assert_close(got, iv.values.expand_as(got))


@pytest.mark.gemma
def test_gemma_attention_heads_width(gemma):
    from interventions.components import resolve

    model, _ = gemma
    where = resolve(model, "attention_heads", 0)
    assert where.width == 4 * 256 and where.module_path.endswith("self_attn.o_proj")


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "--k: expected an integer >= 1"),
    (["--k", "-3"], "--k: expected an integer >= 1"),
    (["--n", "0"], "--n: expected an integer >= 1"),
    (["--bins", "1"], "--bins: expected an integer >= 2"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
    (["--contrast", "en", "xx"], "--contrast: ['xx']"),
])
def test_experts_find_refuses_bad_flags_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    from evaluate import experts as experts_cli
    from interventions import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded before flags were checked"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        experts_cli.main(["find", "--language", "ko", "--out", str(out), *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_experts_cli_refuses_unknown_language_and_out_under_a_file(tmp_path, capsys):
    from evaluate import experts as experts_cli

    with pytest.raises(SystemExit) as exit_:
        experts_cli.main(["find", "--language", "xx", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "--language: ['xx']" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        experts_cli.main(["report", "--ks", "0", "5", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "--ks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        experts_cli.main(["find", "--language", "ko", "--out", str(tmp_path / "file")])
    assert exit_.value.code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        experts_cli.main(["find", "--language", "ko", "--out", str(tmp_path / "file" / "sub")])
    assert exit_.value.code == 2 and "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
