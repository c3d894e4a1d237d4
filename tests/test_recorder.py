"""The one activation recorder (interventions.activations.record) and the one pooling (pool), against independent
references: output_hidden_states of tiny models, plain hooks, hand-computed means."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from alignment.midalign import MidAlignTrainer, center_pooled, info_nce
from interventions.activations import pool, record, tokenize
from interventions.components import decoder_layers, decoder_stack, resolve, unwrap
from tiny_models import LAYERS, char_tokenizer, tiny_lora, tiny_model

TEXTS = ["hello there world", "a cat", "the capital of france is paris"]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _batch(tok, texts=TEXTS):
    return tokenize(tok, texts)


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}


def test_pool_by_hand():
    h = torch.tensor([[[1.0, 10.0], [3.0, -2.0], [float("nan"), float("inf")]],
                      [[2.0, 0.0], [-50.0, 7.0], [4.0, 1.0]]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert pool(h, m, "mean").tolist() == [[2.0, 4.0], [3.0, 0.5]]  # the NaN/inf padding never enters
    assert pool(h, m, "max").tolist() == [[3.0, 10.0], [4.0, 1.0]]
    assert pool(h, m, "last").tolist() == [[3.0, -2.0], [4.0, 1.0]]
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert pool(h.nan_to_num(), empty, "mean").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="how"):
        pool(h, m, "median")
    with pytest.raises(ValueError, match="pool"):
        pool(h, m[:, :2])


@pytest.mark.parametrize("arch", ["gemma3", "llama", "gpt2"])
def test_block_output_equals_output_hidden_states_and_stop_after_changes_nothing(arch):
    model, tok = tiny_model(arch), char_tokenizer()
    batch = _batch(tok)
    with torch.no_grad():
        reference = model(**_inputs(batch), output_hidden_states=True).hidden_states  # [0] is the embeddings
    layers = list(range(LAYERS))
    with record(model, layers, stop_after=False) as full:
        whole = full.run(model, **_inputs(batch))
    with record(model, layers) as early:
        stopped = early.run(decoder_stack(model), **_inputs(batch))
    for layer in layers:
        assert torch.equal(stopped[layer], whole[layer])
        if layer < LAYERS - 1:  # the last entry of hidden_states is after the final norm
            torch.testing.assert_close(whole[layer], reference[layer + 1], atol=0, rtol=0)


def test_stop_after_skips_the_later_layers_and_the_head():
    model, tok = tiny_model("llama"), char_tokenizer()
    batch = _batch(tok)
    fired = []
    spies = [decoder_layers(model)[2].register_forward_hook(lambda *a: fired.append("layer 2")),
             model.lm_head.register_forward_hook(lambda *a: fired.append("head"))]
    try:
        with record(model, [1, 0], reduce="mean") as recorder:
            early = recorder.run(model, mask=batch["token_mask"], **_inputs(batch))
        assert fired == []
        with record(model, [1, 0], reduce="mean", stop_after=False) as recorder:
            full = recorder.run(model, mask=batch["token_mask"], **_inputs(batch))
        assert fired == ["layer 2", "head"]
    finally:
        for spy in spies:
            spy.remove()
    assert all(torch.equal(a, b) for a, b in zip(early, full))


@pytest.mark.parametrize("arch", ["gemma3", "gpt2"])
def test_unit_components_equal_a_plain_pre_hook(arch):
    model, tok = tiny_model(arch), char_tokenizer()
    batch = _batch(tok)
    sites = [(c, layer) for c in ("mlp_hidden", "attention_heads") for layer in (0, 3)]
    seen, handles = {}, []
    for site in sites:
        module = unwrap(model).get_submodule(resolve(model, *site).module_path)
        handles.append(module.register_forward_pre_hook(lambda m, a, site=site: seen.setdefault(site, a[0])))
    with torch.no_grad():
        model(**_inputs(batch))
    for h in handles:
        h.remove()
    with record(model, [0, 3], ["mlp_hidden", "attention_heads"]) as recorder:
        whole = recorder.run(decoder_stack(model), **_inputs(batch))
    with record(model, [0, 3], ["mlp_hidden", "attention_heads"], reduce="max") as recorder:
        maxed = recorder.run(decoder_stack(model), mask=batch["token_mask"], **_inputs(batch))
    assert recorder.sites == sites
    for site, value, top in zip(sites, whole, maxed):
        assert torch.equal(value, seen[site])
        by_hand = torch.stack([seen[site][i][batch["token_mask"][i]].amax(0) for i in range(len(TEXTS))])
        assert torch.equal(top, by_hand)


def test_hooks_are_removed_after_an_exception_inside_the_block():
    model, tok = tiny_model("gemma3"), char_tokenizer()
    batch = _batch(tok)
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with record(model, range(LAYERS), ["block_output", "mlp_hidden"], reduce="mean") as recorder:
            assert _hook_count(model) == before + 2 * LAYERS
            recorder.run(model, mask=batch["token_mask"], **_inputs(batch))
            raise RuntimeError("boom")
    assert _hook_count(model) == before
    with pytest.raises(ValueError, match="needs a mask"):  # an error raised inside a hook, mid-forward
        with record(model, [1], reduce="mean") as recorder:
            recorder.run(model, **_inputs(batch))
    assert _hook_count(model) == before
    with torch.no_grad():  # and the model still runs to its logits
        assert model(**_inputs(batch)).logits.shape[:2] == batch["input_ids"].shape


def test_mean_pooling_excludes_bos_and_padding():
    model, tok = tiny_model("gemma3"), char_tokenizer()
    batch = _batch(tok)  # left-padded, <bos> first in every row
    with record(model, [1, 2], reduce="mean") as recorder:
        pooled = recorder.run(decoder_stack(model), mask=batch["token_mask"], **_inputs(batch))
    for i, text in enumerate(TEXTS):
        ids = tok([text], return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for value, layer in zip(pooled, (1, 2)):
            torch.testing.assert_close(value[i], hs[layer + 1][0, 1:].mean(0), atol=1e-5, rtol=1e-5)
            assert not torch.allclose(value[i], hs[layer + 1][0].mean(0), atol=1e-3)  # <bos> would change it


def test_gradients_flow_only_with_keep_grad():
    model = tiny_lora(tiny_model("llama"), "llama")
    tok = char_tokenizer()
    batch = _batch(tok)
    with record(model, [1], reduce="mean", keep_grad=True) as recorder:
        (pooled,) = recorder.run(model, mask=batch["token_mask"], **_inputs(batch))
    assert pooled.requires_grad
    pooled.pow(2).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".layers.1." in n)
    assert all(g is None for n, g in grads.items() if ".layers.2." in n or ".layers.3." in n)  # stopped before them
    with record(model, [1], reduce="mean") as recorder:
        (frozen,) = recorder.run(model, mask=batch["token_mask"], **_inputs(batch))
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, pooled.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_midalign_loss_equals_the_output_hidden_states_reference(layer, tmp_path):
    model = tiny_lora(tiny_model("gemma3"), "gemma3")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = MidAlignTrainer(model=model, args=args, layer=layer, center="batch")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (4, 7), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0
    ids[1, 5:] = 0
    pool_mask = attention.clone()
    pool_mask[:, 0] = 0  # <bos>-like first token excluded
    inputs = {"pair_input_ids": ids, "pair_attention_mask": attention, "pair_pool_mask": pool_mask}

    loss = trainer.alignment_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)

    out = trainer.model(input_ids=ids, attention_mask=attention, output_hidden_states=True, use_cache=False)
    hidden, m = out.hidden_states[layer + 1], pool_mask.float().unsqueeze(-1)
    pooled = center_pooled((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), "batch")
    reference = info_nce(*pooled.chunk(2, dim=0), 0.1)
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    ref_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads and grads.keys() <= ref_grads.keys()
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads.get(name, torch.zeros_like(ref)), ref, atol=1e-6, rtol=1e-5)


def test_record_refuses_bad_sites_and_reductions():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="distinct"):
        with record(model, [1, 1]):
            pass
    with pytest.raises(ValueError, match="reduce"):
        with record(model, [1], reduce="median"):
            pass
    with pytest.raises(ValueError, match="layer"):
        with record(model, [LAYERS]):
            pass
    assert _hook_count(model) == 0
