"""MidAlign (Liu & Niehues 2025): align middle-layer representations of parallel sentences.

A ``transformers.Trainer`` subclass whose ``compute_loss`` alternates batch by batch: even
optimizer steps take the language-modelling loss on the batch's instruction texts, odd steps a
symmetric InfoNCE loss (temperature 0.1, in-batch negatives) between mean-pooled hidden states
of the (English, L) sentences of the batch at the output of decoder layer ``layer``. LoRA on
attention and MLP projections.

One departure from the paper, on by default (``MidAlignConfig.center="batch"``): the pooled states are
centred on their batch mean before the cosines. Gemma's middle-layer states share a component so large
that any two sentences have cosine ~0.995, which leaves the uncentred InfoNCE at ln(batch) with no
gradient signal; ``center="none"`` is the loss as written.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from interventions.activations import pool, record

from .config import MidAlignConfig
from .data import pair_examples, to_dataset
from .training import data_record, finish, lora_config, run_training, start_training, trainer_arguments


def info_nce(source: torch.Tensor, target: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: row i of ``source`` and ``target`` are a
    positive pair, every other row a negative. Similarities are cosines divided by ``temperature``;
    the loss is the mean of the source->target and target->source cross entropies."""
    if source.shape != target.shape or source.dim() != 2:
        raise ValueError(f"info_nce: expected two [batch, hidden] tensors of one shape, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    logits = F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    labels = torch.arange(source.size(0), device=source.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [batch, seq, d] over the positions where ``mask`` [batch, seq] is 1: the project's one
    pooling (:func:`interventions.activations.pool`)."""
    return pool(hidden, mask, "mean")


def center_pooled(pooled: torch.Tensor, how: str = "batch") -> torch.Tensor:
    """``pooled`` [2B, d] (English rows then L rows) minus its batch mean (``"batch"``) or unchanged (``"none"``)."""
    if how == "none":
        return pooled
    if how != "batch":
        raise ValueError(f"center: expected 'batch' or 'none', got {how!r}")
    return pooled - pooled.mean(dim=0, keepdim=True)


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


class MidAlignCollator:
    """Pads (right) the LM text and stacks the English and L sentences into one pair batch
    ([English rows; L rows]) so both go through one forward pass."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        text = [e["input_ids"] for e in examples]
        pairs = [e["source_ids"] for e in examples] + [e["target_ids"] for e in examples]
        input_ids = _pad(text, self.pad_token_id)
        attention_mask = _pad([[1] * len(s) for s in text], 0)
        pair_ids = _pad(pairs, self.pad_token_id)
        pair_mask = _pad([[1] * len(s) for s in pairs], 0)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": input_ids.masked_fill(attention_mask == 0, -100),
                "pair_input_ids": pair_ids, "pair_attention_mask": pair_mask,
                "pair_pool_mask": _pad([e["source_pool"] for e in examples] + [e["target_pool"] for e in examples], 0)}


class MidAlignTrainer(Trainer):
    """``Trainer`` with the MidAlign loss; ``layer`` is the decoder layer whose output is aligned."""

    def __init__(self, *args, layer: int, temperature: float = 0.1, alignment_weight: float = 1.0,
                 center: str = "batch", **kwargs):
        super().__init__(*args, **kwargs)
        self.layer = layer
        self.center = center
        self.temperature = temperature
        self.alignment_weight = alignment_weight
        self.model_accepts_loss_kwargs = False  # let Trainer scale by gradient accumulation itself
        self._loss_log: dict[str, list[float]] = defaultdict(list)

    def is_alignment_step(self) -> bool:
        return self.state.global_step % 2 == 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.is_alignment_step():
            loss = self.alignment_loss(model, inputs)
            self._loss_log["infonce_loss"].append(loss.detach().item())
            loss = self.alignment_weight * loss
            outputs = None
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            labels=inputs["labels"], use_cache=False)
            loss = outputs.loss
            if model.training:
                self._loss_log["lm_loss"].append(loss.detach().item())
        return (loss, outputs) if return_outputs else loss

    def alignment_loss(self, model, inputs) -> torch.Tensor:
        """InfoNCE between mean-pooled layer-``layer`` outputs of the English and L sentences.

        The output of decoder layer ``layer`` is recorded by :func:`interventions.activations.record` (with
        gradients, in the training dtype, pooled over ``pair_pool_mask``); the forward stops after that layer. For
        the last layer this is its output before the final norm (``output_hidden_states[-1]`` is after it)."""
        with record(self.accelerator.unwrap_model(model), [self.layer], reduce="mean", keep_grad=True,
                    dtype=None) as recorder:
            (pooled,) = recorder.run(model, mask=inputs["pair_pool_mask"], input_ids=inputs["pair_input_ids"],
                                     attention_mask=inputs["pair_attention_mask"], use_cache=False, logits_to_keep=1)
        pooled = center_pooled(pooled, self.center)  # English and L rows together: the language offset stays
        source, target = pooled.chunk(2, dim=0)
        return info_nce(source, target, self.temperature)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the mean of each loss since the last one
            for key, values in self._loss_log.items():
                if values:
                    logs[key] = round(sum(values) / len(values), 6)
            self._loss_log.clear()
        super().log(logs, start_time)


def _tokenize(tokenizer, max_length: int):
    special = set(tokenizer.all_special_ids)

    def fn(example):
        enc = tokenizer([example["text"], example["source"], example["target"]], truncation=True,
                        max_length=max_length, add_special_tokens=True)
        ids = enc["input_ids"]
        # Pool over real tokens only: not padding (collator) and not BOS/special tokens, whose
        # hidden states are language-independent (and, in Gemma, of very large norm).
        pools = [[0 if t in special else 1 for t in s] for s in ids[1:]]
        return {"input_ids": ids[0], "source_ids": ids[1], "target_ids": ids[2],
                "source_pool": pools[0], "target_pool": pools[1]}

    return fn


def train_midalign(config: MidAlignConfig, output_dir: str | Path, *, model=None, tokenizer=None,
                   resume: bool = False) -> Path:
    """Train a MidAlign LoRA adapter into ``output_dir``; returns the adapter directory."""
    from peft import get_peft_model

    model, tokenizer, parallel = start_training(config, MidAlignConfig, model, tokenizer)
    n_layers = model.config.get_text_config().num_hidden_layers
    layer = n_layers // 2 if config.layer is None else config.layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"MidAlignConfig.layer: expected 0 <= layer < {n_layers}, got {layer}")
    rows = pair_examples(parallel)
    dataset = to_dataset(rows, config.seed).map(_tokenize(tokenizer, config.max_length),
                                                remove_columns=["text", "source", "target", "language", "index"])
    peft_model = get_peft_model(model, lora_config(config))
    args = TrainingArguments(**trainer_arguments(config, output_dir), remove_unused_columns=False)
    trainer = MidAlignTrainer(model=peft_model, args=args, train_dataset=dataset,
                              data_collator=MidAlignCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                              layer=layer, temperature=config.temperature, alignment_weight=config.alignment_weight,
                              center=config.center)
    wall = run_training(trainer, output_dir, resume)
    return finish(trainer, config, output_dir, data_record(config, parallel, rows, layer=layer), wall)
