"""Alignment adapters: data (no leaks, pair layout), losses (InfoNCE, masked NLL), and each
trainer end to end on a tiny Gemma-3 that shares the real gemma tokenizer (so the real data
pipeline runs), adapter round trip, resume, and stacking with steering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers as tf

from alignment import config_for, load_adapter, read_metadata, train
from alignment.clo import masked_nll
from alignment.config import CLOConfig, MidAlignConfig, MultilingualSFTConfig
from alignment.data import (find_leaks, forbidden_texts, held_out_sentences, pair_examples, parallel_sentences,
                            preference_examples, sft_examples, training_texts)
from alignment.midalign import center_pooled, info_nce, mean_pool
from alignment.training import lora_config
from evaluate.loaders import FLORES_CODES, load_flores

ALL = tuple(sorted(set(FLORES_CODES) - {"en"}))


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def parallel():
    return parallel_sentences(ALL)


def test_parallel_sentences_are_aligned_and_hold_out_the_tail(parallel):
    n = len(parallel["en"])
    assert all(len(v) == n for v in parallel.values())
    assert 850 < n <= 997 - 97
    dev_en = load_flores("en", "dev")
    held = held_out_sentences(ALL)
    assert held["en"] == dev_en[-97:]
    assert not set(held["en"]) & set(parallel["en"])
    # alignment by line: the pair (en, ko) of training index j is one FLORES dev line
    dev_ko = load_flores("ko", "dev")
    for j in (0, 100, n - 1):
        i = dev_en.index(parallel["en"][j])
        assert dev_ko[i] == parallel["ko"][j]


def test_no_training_example_contains_devtest_or_evaluation_text(parallel):
    rows = sft_examples(parallel) + pair_examples(parallel) + preference_examples(parallel)
    texts = training_texts(rows)
    forbidden = forbidden_texts()
    assert len(forbidden) > 9 * 1000  # all devtest sentences of the 9 bundled languages ...
    eval_dirs = [p for p in Path("evaluate/data").iterdir() if p.is_dir() and p.name != "flores200"]
    if eval_dirs:  # ... plus the evaluation tasks' bundled texts
        assert len(forbidden) > 9 * 1012
    assert find_leaks(texts, forbidden) == []
    # the held-out slice never appears either
    assert find_leaks(texts, held_out_sentences(ALL)["en"]) == []


def test_find_leaks_catches_a_planted_sentence_and_dev_devtest_overlap():
    devtest = load_flores("es", "devtest")
    planted = ["Translate.\nSpanish: " + devtest[5] + "\nEnglish: x", "clean"]
    assert find_leaks(planted, devtest) == [devtest[5]]
    # FLORES dev and devtest share sentences; the raw dev file would leak, the training slice must not
    raw_dev = load_flores("es", "dev")
    assert find_leaks(raw_dev, devtest), "expected the known dev/devtest overlap in raw FLORES"
    assert find_leaks(parallel_sentences(["es"])["es"], devtest) == []


def test_preference_pairs_prefer_the_prompt_language(parallel):
    rows = preference_examples({k: parallel[k][:50] for k in ("en", "ko", "ar")})
    assert len(rows) == 2 * 2 * 50
    en_tails = {r["chosen"] for r in rows if r["prompt_language"] == "en"}
    for r in rows:
        assert r["chosen_language"] == r["prompt_language"]
        assert r["rejected_language"] != r["chosen_language"]
        assert "en" in (r["chosen_language"], r["rejected_language"])
        assert r["nll"] == (1.0 if r["chosen_language"] != "en" else 0.0)
        if r["prompt_language"] == "en":
            i = r["index"]
            assert parallel["en"][i].endswith(r["chosen"].strip())
            assert parallel[r["rejected_language"]][i].endswith(r["rejected"].strip())
        else:
            assert r["rejected"] in en_tails  # the English response of the same line


# ----------------------------------------------------------------------------- losses

def test_info_nce_matches_a_hand_computed_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: a0.b0 = 1, a0.b1 = 1/sqrt2, a1.b0 = 0, a1.b1 = 1/sqrt2; logits = cos / 0.1
    s = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(10 * s)))
    row1 = -math.log(math.exp(10 * s) / (math.exp(0) + math.exp(10 * s)))
    col0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(0)))
    col1 = -math.log(math.exp(10 * s) / (math.exp(10 * s) + math.exp(10 * s)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert info_nce(a, b, 0.1).item() == pytest.approx(expected, rel=1e-5)
    # perfectly aligned, orthogonal pairs: loss -> log(1 + e^-10)
    eye = torch.eye(2)
    assert info_nce(eye, eye, 0.1).item() == pytest.approx(math.log1p(math.exp(-10)), abs=1e-6)
    with pytest.raises(ValueError, match="info_nce"):
        info_nce(a, b[:1])


def test_mean_pool_ignores_masked_positions():
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [-50.0], [4.0]]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert mean_pool(h, m).squeeze(-1).tolist() == [2.0, 3.0]


def test_masked_nll_uses_only_selected_chosen_rows():
    logps = torch.tensor([[-1.0, -2.0], [-4.0, -8.0], [-100.0, -100.0], [-100.0, -100.0]])  # 2 chosen, 2 rejected
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    assert masked_nll(logps, mask, torch.tensor([0.0, 1.0])).item() == pytest.approx(4.0)
    assert masked_nll(logps, mask, torch.tensor([1.0, 1.0])).item() == pytest.approx(7.0 / 3)
    assert masked_nll(logps, mask, torch.tensor([0.0, 0.0])).item() == 0.0


def test_configs_refuse_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="languages"):
        MidAlignConfig(languages=("en",))
    with pytest.raises(ValueError, match="max_steps"):
        CLOConfig(max_steps=0)
    with pytest.raises(ValueError, match="unknown field"):
        config_for("midalign", bogus=1)
    with pytest.raises(ValueError, match="method"):
        config_for("rlhf")
    with pytest.raises(ValueError, match="temperature"):
        MidAlignConfig(temperature=0.0)
    c = config_for("clo", languages=["ko"], max_steps=3)
    assert CLOConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("config, adapted", [
    (CLOConfig(), {"q_proj", "k_proj", "v_proj", "o_proj"}),  # CLO adapts attention only
    (MultilingualSFTConfig(), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    (MidAlignConfig(), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_each_method_adapts_its_modules(config, adapted):
    """The LoRA config a trainer builds from the method's config wraps exactly those modules in every layer."""
    from peft import get_peft_model
    from tiny_models import LAYERS, tiny_model

    model = get_peft_model(tiny_model("gemma3"), lora_config(config))
    wrapped = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert {name.rsplit(".", 1)[1] for name in wrapped} == adapted
    assert len(wrapped) == LAYERS * len(adapted)


# ----------------------------------------------------------------------------- training (tiny model)

@pytest.fixture(scope="module")
def tokenizer():
    from interventions.models import load_tokenizer

    return load_tokenizer("gemma-3-270m")


def tiny_gemma(tokenizer, seed=0):
    """A 4-layer, hidden-32 Gemma-3 over the real gemma vocabulary (about 8M parameters)."""
    config = tf.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _logits(model, tokenizer, texts=("Hello world, this is a test.", "안녕하세요 세계")):
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


SMALL = dict(languages=["ko", "es"], max_steps=2, batch_size=4, max_length=32, save_steps=2, logging_steps=1,
             max_sentences=16, learning_rate=5e-3)


@pytest.mark.gemma
@pytest.mark.slow
@pytest.mark.parametrize("method", ["multilingual_sft", "midalign", "clo"])
def test_each_method_trains_and_its_adapter_loads_back(method, tokenizer, tmp_path):
    base_logits = _logits(tiny_gemma(tokenizer), tokenizer)
    out = train(config_for(method, **SMALL), tmp_path / method, model=tiny_gemma(tokenizer), tokenizer=tokenizer)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    text = (out / "training_metadata.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # sorted keys
    assert meta["method"] == method and meta["steps"] == 2 and meta["seed"] == 0
    assert meta["languages"] == ["ko", "es"] and meta["data"]["n_train_examples"] > 0
    assert meta["final_losses"] and all(math.isfinite(v) for v in meta["final_losses"].values())
    assert "peft" in meta["versions"] and "trl" in meta["versions"]
    assert "base_model:" in (out / "README.md").read_text()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    targets = set(adapter_cfg["target_modules"])
    if method == "clo":
        assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert {"dpo_loss", "nll_loss"} <= set(meta["final_losses"])
    else:
        assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if method == "midalign":
        assert {"lm_loss", "infonce_loss"} <= set(meta["final_losses"])
        assert meta["data"]["layer"] == 2

    loaded = load_adapter(tiny_gemma(tokenizer), out)
    assert type(loaded).__name__.startswith("PeftModel")
    adapted = _logits(loaded, tokenizer)
    assert torch.isfinite(adapted).all()
    assert (adapted - base_logits).abs().max() > 1e-4  # the adapter changes the model
    merged = _logits(loaded.merge_and_unload(), tokenizer)
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    assert read_metadata(out)["method"] == method


@pytest.mark.gemma
@pytest.mark.slow
def test_midalign_resumes_from_its_last_checkpoint(tokenizer, tmp_path):
    out = tmp_path / "mid"
    train(config_for("midalign", **SMALL), out, model=tiny_gemma(tokenizer), tokenizer=tokenizer)
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    first = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert first["global_step"] == 2
    config = config_for("midalign", **{**SMALL, "max_steps": 4})
    train(config, out, model=tiny_gemma(tokenizer), tokenizer=tokenizer, resume=True)
    meta = read_metadata(out)
    assert meta["steps"] == 4
    steps = [e["step"] for e in meta["loss_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4]  # the history of steps 1-2 came from the checkpoint
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    # steps alternate: LM loss on even global steps (logged at odd step numbers), InfoNCE on odd ones
    kinds = ["lm_loss" in e for e in meta["loss_history"] if "loss" in e]
    assert kinds == [True, False, True, False]


@pytest.mark.parametrize("method, wrong", [("multilingual_sft", CLOConfig), ("midalign", CLOConfig),
                                           ("clo", MidAlignConfig)])
def test_each_trainer_refuses_another_methods_config_before_loading(method, wrong, tmp_path):
    from alignment.clo import train_clo
    from alignment.midalign import train_midalign
    from alignment.sft import train_multilingual_sft

    trainer = {"multilingual_sft": train_multilingual_sft, "midalign": train_midalign, "clo": train_clo}[method]
    with pytest.raises(ValueError, match=f"config: expected .*, got {wrong.__name__}"):
        trainer(wrong(model="no-such-model"), tmp_path)  # refused before the (unloadable) model is touched


def test_data_record_counts_sentences_examples_and_languages():
    from alignment.training import data_record

    parallel = {"en": ["a", "b", "c"], "ko": ["x", "y", "z"], "es": ["p", "q", "r"]}
    record = data_record(config_for("clo", languages=["ko", "es"]), parallel, [{}] * 12, n_nll_pairs=6)
    assert record == {"source": "FLORES-200 dev", "n_sentences": 3, "n_train_examples": 12, "n_nll_pairs": 6,
                      "languages": {"ko": 3, "es": 3}}


def test_load_adapter_refuses_a_directory_without_an_adapter(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_adapter(torch.nn.Linear(2, 2), tmp_path)


def test_cli_refuses_unknown_fields(capsys):
    from alignment.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "midalign", "--out", "/tmp/never", "--set", "bogus=1"])
    assert "bogus" in capsys.readouterr().err


# ----------------------------------------------------------------------------- stacking with steering

@pytest.mark.gemma
@pytest.mark.slow
def test_steering_stacks_on_the_unmerged_adapter_like_on_the_merged_model(tokenizer, tmp_path):
    from interventions import AdditiveIntervention, InterventionConfig, steer

    out = train(config_for("midalign", **SMALL), tmp_path / "mid", model=tiny_gemma(tokenizer),
                tokenizer=tokenizer)
    base = tiny_gemma(tokenizer)
    torch.manual_seed(3)
    iv = AdditiveIntervention("en_transfer", "block_output", 1, torch.randn(32), coefficient=2.0)
    made_on_base = InterventionConfig.for_model(base, [iv])
    made_on_base.save_pretrained(tmp_path / "iv")
    with steer(base, made_on_base):
        steered_base = _logits(base, tokenizer)

    aligned = load_adapter(tiny_gemma(tokenizer), out)
    unsteered = _logits(aligned, tokenizer)
    config = InterventionConfig.from_pretrained(tmp_path / "iv")  # base-model directory onto the aligned model
    with steer(aligned, config):
        steered_unmerged = _logits(aligned, tokenizer)
    merged = load_adapter(tiny_gemma(tokenizer), out).merge_and_unload()
    with steer(merged, config):
        steered_merged = _logits(merged, tokenizer)
    torch.testing.assert_close(steered_merged, steered_unmerged, atol=1e-4, rtol=1e-4)
    assert (steered_unmerged - unsteered).abs().max() > 1e-3  # steering does something on top of the adapter
    assert (steered_unmerged - steered_base).abs().max() > 1e-4  # and the adapter still matters
    torch.testing.assert_close(_logits(aligned, tokenizer), unsteered)  # hooks removed

    # and vice versa: a config made on the aligned model loads onto the base model
    InterventionConfig.for_model(aligned, [iv]).save_pretrained(tmp_path / "iv_aligned")
    with steer(base, InterventionConfig.from_pretrained(tmp_path / "iv_aligned")):
        torch.testing.assert_close(_logits(base, tokenizer), steered_base)


def test_batch_centring_recovers_infonce_signal_under_a_shared_offset():
    """Gemma's pooled middle-layer states share a huge component (cosine ~0.995 between unrelated
    sentences): uncentred InfoNCE then sits at ln(batch); centring on the batch mean recovers the signal."""
    g = torch.Generator().manual_seed(0)
    content = torch.randn(8, 32, generator=g)
    en, other = content + 0.1 * torch.randn(8, 32, generator=g), content + 0.1 * torch.randn(8, 32, generator=g)
    offset = 300.0 * torch.randn(1, 32, generator=g)
    clean = info_nce(en, other).item()
    raw = info_nce(en + offset, other + offset).item()
    src, tgt = center_pooled(torch.cat([en + offset, other + offset])).chunk(2)
    centred = info_nce(src, tgt).item()
    assert raw > 0.95 * math.log(8) and clean < 0.5
    assert abs(centred - clean) < 0.3
    assert torch.equal(center_pooled(en, "none"), en)
    with pytest.raises(ValueError, match="center"):
        center_pooled(en, "per_side")
    with pytest.raises(ValueError, match="MidAlignConfig.center"):
        MidAlignConfig(center="sides")
