"""Multilingual SFT: TRL ``SFTTrainer`` + LoRA on instruction data built from FLORES-200 dev
(translation to and from English and same-language continuation), loss on completions only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .config import MultilingualSFTConfig
from .data import sft_examples, to_dataset
from .training import data_record, finish, lora_config, run_training, start_training, trainer_arguments


def train_multilingual_sft(config: MultilingualSFTConfig, output_dir: str | Path, *, model=None, tokenizer=None,
                           resume: bool = False) -> Path:
    """Train a multilingual-SFT LoRA adapter into ``output_dir``; returns the adapter directory."""
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, parallel = start_training(config, MultilingualSFTConfig, model, tokenizer)
    rows = sft_examples(parallel)
    dataset = to_dataset(rows, config.seed).select_columns(["prompt", "completion"])
    args = SFTConfig(**trainer_arguments(config, output_dir), max_length=config.max_length, packing=False,
                     completion_only_loss=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(config))
    wall = run_training(trainer, output_dir, resume)
    kinds = dict(Counter(row["kind"] for row in rows))
    return finish(trainer, config, output_dir, data_record(config, parallel, rows, kinds=kinds), wall)
