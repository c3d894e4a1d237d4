"""Tiny randomly initialised decoders built in code (no downloads), one per architecture family."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 128
HIDDEN = 32
LAYERS = 4


def _common(**extra):
    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base.update(extra)
    return base


def _configs():
    return {
        "gemma3": lambda: tf.Gemma3TextConfig(**_common(head_dim=8, sliding_window=4, query_pre_attn_scalar=8)),
        "gemma2": lambda: tf.Gemma2Config(**_common(head_dim=8, sliding_window=4, query_pre_attn_scalar=8)),
        "llama": lambda: tf.LlamaConfig(**_common()),
        "qwen2": lambda: tf.Qwen2Config(**_common()),
        "qwen3": lambda: tf.Qwen3Config(**_common(head_dim=8)),
        "mistral": lambda: tf.MistralConfig(**_common(sliding_window=None)),
        "phi3": lambda: tf.Phi3Config(**_common(num_key_value_heads=4)),
        "olmo2": lambda: tf.Olmo2Config(**_common()),
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256,
                                      bos_token_id=1, eos_token_id=2),
        "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                             num_hidden_layers=LAYERS, num_attention_heads=4,
                                             max_position_embeddings=256, bos_token_id=1, eos_token_id=2),
    }


ARCHITECTURES = sorted(_configs())


def tiny_model(arch: str = "llama", seed: int = 0):
    """A float32 eval-mode causal LM of ``arch`` with random weights (deterministic for ``seed``)."""
    config = _configs()[arch]()
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


LORA_TARGETS = {
    "gpt2": ["c_attn", "c_fc"],
    "gpt_neox": ["query_key_value", "dense_h_to_4h"],
    "phi3": ["qkv_proj", "gate_up_proj"],
}


def tiny_lora(model, arch: str, seed: int = 0, r: int = 4):
    """Wrap ``model`` in an unmerged PEFT LoRA adapter whose B matrices are non-zero."""
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS.get(arch, ["q_proj", "v_proj", "up_proj"])
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                                  init_lora_weights=False))
    torch.manual_seed(seed + 1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    peft_model.eval()
    return peft_model
