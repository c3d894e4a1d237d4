"""The core on the real google/gemma-3-270m (installed from PyPI, converted once into the cache)."""

import pytest
import torch

from interventions import AdditiveIntervention, InterventionConfig, resolve, steer, unwrap
from interventions.models import cache_dir, ensure_embedded_model, model_id

pytestmark = pytest.mark.gemma


def test_embedded_model_is_the_real_gemma(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert len(tokenizer) >= 262_000
    assert model_id(model) == "google/gemma-3-270m"
    assert ensure_embedded_model().parent == cache_dir()
    batch = tokenizer(["우리나라의 수도는", "我国的首都是"], return_tensors="pt", padding=True)
    with torch.no_grad():
        top = model(**batch).logits[:, -1].topk(10).indices
    decoded = [[tokenizer.decode(t).strip() for t in row] for row in top]
    assert "서울" in decoded[0], decoded[0]  # a pretrained multilingual model, not random weights
    assert any(t.startswith("北") for t in decoded[1]), decoded[1]


def test_steer_save_load_same_outputs_on_gemma(gemma, tmp_path):
    model, tokenizer = gemma
    layer = 6
    where = resolve(model, "block_output", layer)
    assert where.module_path == "model.layers.6"
    vector = torch.randn(640, generator=torch.Generator().manual_seed(0))
    config = InterventionConfig.for_model(model, [AdditiveIntervention("probe", "block_output", layer, vector, 20.0)])
    batch = tokenizer(["The capital of our country is", "Mata uang negara kita adalah"], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        base = model(**batch).logits[:, -1]
    handle = unwrap(model).get_submodule(where.module_path).register_forward_hook(lambda m, a, o: o + 20.0 * vector)
    with torch.no_grad():
        expected = model(**batch).logits[:, -1]
    handle.remove()
    with steer(model, config), torch.no_grad():
        steered = model(**batch).logits[:, -1]
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(steered, base, atol=1e-3)
    path = config.save_pretrained(tmp_path / "probe", model=model)
    loaded = InterventionConfig.from_pretrained(path, model=model)
    with steer(model, loaded), torch.no_grad():
        again = model(**batch).logits[:, -1]
        generated = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert torch.equal(again, steered)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 5
    with torch.no_grad():
        assert torch.equal(model(**batch).logits[:, -1], base)


def test_gemma_lora_unmerged_and_merged_agree_under_steering(gemma):
    import copy

    from peft import LoraConfig, get_peft_model

    model, tokenizer = gemma
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                           init_lora_weights=False))
    lora.eval()
    vector = torch.randn(640, generator=torch.Generator().manual_seed(1))
    config = InterventionConfig.for_model(model, [AdditiveIntervention("v", "block_output", 12, vector, 10.0)])
    batch = tokenizer(["Hello world, this is"], return_tensors="pt")
    with steer(lora, config), torch.no_grad():
        unmerged = lora(**batch).logits[:, -1]
    merged = lora.merge_and_unload()
    with steer(merged, config), torch.no_grad():
        merged_logits = merged(**batch).logits[:, -1]
    torch.testing.assert_close(unmerged, merged_logits, atol=2e-3, rtol=1e-3)
