"""Multilingual SFT: TRL ``SFTTrainer`` + LoRA on instruction data built from FLORES-200 dev
(translation to and from English and same-language continuation), loss on completions only."""

from __future__ import annotations

from pathlib import Path

from .config import MultilingualSFTConfig
from .data import parallel_sentences, sft_examples, to_dataset
from .training import finish, load_for_training, lora_config, run_training, trainer_arguments


def train_multilingual_sft(config: MultilingualSFTConfig, output_dir: str | Path, *, model=None, tokenizer=None,
                           resume: bool = False) -> Path:
    """Train a multilingual-SFT LoRA adapter into ``output_dir``; returns the adapter directory."""
    from trl import SFTConfig, SFTTrainer

    if not isinstance(config, MultilingualSFTConfig):
        raise ValueError(f"config: expected MultilingualSFTConfig, got {type(config).__name__}")
    model, tokenizer = load_for_training(config, model, tokenizer)
    parallel = parallel_sentences(config.languages, config.held_out, config.max_sentences)
    rows = sft_examples(parallel)
    dataset = to_dataset(rows, config.seed).select_columns(["prompt", "completion"])
    args = SFTConfig(**trainer_arguments(config, output_dir), max_length=config.max_length, packing=False,
                     completion_only_loss=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(config))
    wall = run_training(trainer, output_dir, resume)
    kinds = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    data_info = {"source": "FLORES-200 dev", "n_sentences": len(parallel["en"]), "n_train_examples": len(rows),
                 "kinds": kinds, "languages": {lang: len(parallel[lang]) for lang in config.languages}}
    return finish(trainer, config, output_dir, data_info, wall)
