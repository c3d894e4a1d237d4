"""Steering correctness: pyvene-applied interventions against hand-written forward hooks."""

import pytest
import torch

from interventions import (
    COMPONENTS,
    AdditiveIntervention,
    InterventionConfig,
    SetIntervention,
    decoder_layers,
    resolve,
    steer,
    unwrap,
)
from interventions.components import decoder_layers_path
from tiny_models import ARCHITECTURES, tiny_lora, tiny_model

IDS = torch.tensor([[1, 5, 6, 7, 8, 9], [0, 0, 1, 9, 10, 11]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def reference_hook(model, component, layer, delta, positions=None):
    """Add ``delta`` to the component's tensor with a plain forward hook (the definition of steering)."""
    where = resolve(model, component, layer)
    module = unwrap(model).get_submodule(where.module_path)

    def add(t):
        if positions is None:
            return t + delta
        return t + positions.unsqueeze(-1).to(t.dtype) * delta

    if where.hook_type == "register_forward_pre_hook":
        def pre(mod, args):
            return (add(args[0]),) + tuple(args[1:])
        return module.register_forward_pre_hook(pre)

    def post(mod, args, out):
        if isinstance(out, tuple):
            return (add(out[0]),) + tuple(out[1:])
        return add(out)
    return module.register_forward_hook(post)


def additive(model, component="block_output", layer=2, coefficient=2.5, positions="all", seed=0, name="v"):
    width = resolve(model, component, layer).width
    vector = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    iv = AdditiveIntervention(name, component, layer, vector, coefficient, positions)
    return InterventionConfig.for_model(model, [iv]), iv


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_steered_logits_equal_hand_written_hook(arch, component):
    model = tiny_model(arch)
    base = logits(model)
    config, iv = additive(model, component)
    handle = reference_hook(model, component, iv.layer, iv.delta())
    expected = logits(model)
    handle.remove()
    assert not torch.allclose(expected, base, atol=1e-4), "the steering vector must change the logits"
    with steer(model, config):
        steered = logits(model)
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=0)
    assert torch.equal(logits(model), base), "logits after the context must be bit-identical"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_unmerged_and_merged_agree(arch):
    model = tiny_lora(tiny_model(arch), arch)
    config, iv = additive(model, "block_output", layer=1)
    # the intervention resolves inside the LoRA-injected base model
    assert decoder_layers(model) is decoder_layers(unwrap(model))
    plain_unmerged = logits(model)
    with steer(model, config):
        unmerged = logits(model)
    merged_model = model.merge_and_unload()
    assert torch.allclose(logits(merged_model), plain_unmerged, atol=1e-4)
    with steer(merged_model, config):
        merged = logits(merged_model)
    torch.testing.assert_close(unmerged, merged, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unmerged, plain_unmerged, atol=1e-4)


def test_same_config_applies_to_base_and_lora_models():
    base = tiny_model("llama")
    config, iv = additive(base)
    lora = tiny_lora(tiny_model("llama"), "llama")
    with steer(lora, config):
        steered = logits(lora)
    handle = reference_hook(lora, iv.component, iv.layer, iv.delta())
    expected = logits(lora)
    handle.remove()
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_left_padded_batch_equals_each_example_alone(positions):
    model = tiny_model("qwen2")
    config, _ = additive(model, positions=positions)
    with steer(model, config):
        batch = logits(model)
        for row in range(IDS.shape[0]):
            keep = MASK[row].bool()
            alone = logits(model, IDS[row, keep][None], MASK[row, keep][None])
            torch.testing.assert_close(batch[row, keep], alone[0], atol=1e-5, rtol=1e-5)


def test_last_position_on_right_padding_is_the_last_real_token():
    model = tiny_model("llama")
    config, iv = additive(model, positions="last")
    ids = torch.tensor([[1, 5, 6, 7], [1, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    where = torch.tensor([[0, 0, 0, 1], [0, 1, 0, 0]])
    handle = reference_hook(model, "block_output", iv.layer, iv.delta(), positions=where)
    expected = logits(model, ids, mask)
    handle.remove()
    with steer(model, config):
        steered = logits(model, ids, mask)
    torch.testing.assert_close(steered[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)


def greedy_reference(model, iv, ids, steps, positions):
    """No-cache reference: re-run the whole sequence each step, adding the vector where ``positions`` says."""
    prompt_len = ids.shape[1]
    seq = ids
    for _ in range(steps):
        n = seq.shape[1]
        pos = torch.arange(n)
        rule = {"all": pos >= 0, "prompt": pos < prompt_len, "generated": pos >= prompt_len,
                "last": pos == prompt_len - 1}[positions]
        handle = reference_hook(model, iv.component, iv.layer, iv.delta(), positions=rule[None].expand(seq.shape[0], -1))
        with torch.no_grad():
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        handle.remove()
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@pytest.mark.parametrize("arch", ["gemma3", "llama", "gpt2"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last"])
def test_generate_with_kv_cache_steers_as_positions_say(arch, positions):
    model = tiny_model(arch)
    config, iv = additive(model, coefficient=8.0, positions=positions)
    prompt = torch.tensor([[1, 17, 33, 49, 65]])
    steps = 8
    expected = greedy_reference(model, iv, prompt, steps, positions)
    with steer(model, config):
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.tolist() == expected.tolist()
    plain = greedy_reference(model, iv, prompt, 0, positions)
    assert plain.shape[1] == prompt.shape[1]


def test_generate_positions_differ_from_each_other():
    model = tiny_model("llama")
    prompt = torch.tensor([[1, 17, 33, 49, 65]])
    outs = {}
    for positions in ["all", "prompt", "generated", "last"]:
        config, _ = additive(model, coefficient=8.0, positions=positions)
        with steer(model, config), torch.no_grad():
            outs[positions] = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0).tolist()
    assert len({str(v) for v in outs.values()}) >= 3


def test_hooks_removed_on_exception_and_model_not_mutated():
    model = tiny_lora(tiny_model("gemma3"), "gemma3")
    base = logits(model)
    flags = [p.requires_grad for p in model.parameters()]
    config, _ = additive(model)
    hook_counts = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, config):
            assert not torch.equal(logits(model), base)
            raise RuntimeError("boom")
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hook_counts
    assert torch.equal(logits(model), base)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_user_hooks_survive_steering():
    model = tiny_model("llama")
    seen = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, a, o: seen.append(1))
    config, _ = additive(model)
    with steer(model, config):
        logits(model)
    logits(model)
    handle.remove()
    assert len(seen) == 2


def test_two_interventions_stack_and_nested_contexts_compose():
    model = tiny_model("mistral")
    (c1, iv1), (c2, iv2) = additive(model, layer=1, seed=1, name="a"), additive(model, layer=3, seed=2, name="b")
    both = InterventionConfig.for_model(model, [iv1, iv2])
    h1 = reference_hook(model, "block_output", 1, iv1.delta())
    h2 = reference_hook(model, "block_output", 3, iv2.delta())
    expected = logits(model)
    h1.remove(), h2.remove()
    with steer(model, both):
        together = logits(model)
    with steer(model, c1), steer(model, c2):
        nested = logits(model)
    torch.testing.assert_close(together, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(nested, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gemma3", "gpt2", "phi3"])
def test_set_intervention_forces_units(arch):
    model = tiny_model(arch)
    width = resolve(model, "mlp_hidden", 1).width
    units = torch.tensor([0, 3, width - 1])
    values = torch.tensor([1.5, -2.0, 0.25])
    config = InterventionConfig.for_model(model, [SetIntervention("experts", "mlp_hidden", 1, units, values)])
    module = unwrap(model).get_submodule(resolve(model, "mlp_hidden", 1).module_path)
    seen = []
    with steer(model, config):  # observe after pyvene's hook (hooks run in registration order)
        handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        steered = logits(model)
        handle.remove()
    assert torch.equal(seen[0][..., units], values.expand_as(seen[0][..., units]))
    assert not torch.allclose(steered, logits(model))


def test_multimodal_wrapper_text_stack_is_found():
    import transformers as tf

    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
                  patch_size=14)
    model = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text, vision_config=vision,
                                                              mm_tokens_per_image=4)).eval()
    assert decoder_layers_path(model) == "model.language_model.layers"
    config, iv = additive(model, layer=1)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
    with steer(model, config), torch.no_grad():
        steered = model(input_ids=ids).logits
    assert not torch.allclose(base, steered)
