"""Pieces every alignment trainer shares: the start (config check, model loading, FLORES dev parallel
sentences), LoRA config, Trainer arguments, checkpoint resume, the data record, and writing the finished
adapter directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from interventions.provenance import versions

from .adapters import write_metadata, write_model_card
from .config import AlignmentConfig
from .data import parallel_sentences

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def load_for_training(config: AlignmentConfig, model=None, tokenizer=None):
    """(model, tokenizer): the given ones, or ``config.model`` loaded in float32 with eager attention
    (what transformers recommends for training Gemma-3)."""
    from interventions.models import load_model, load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(config.model)
    if model is None:
        model = load_model(config.model, dtype=torch.float32, attn_implementation="eager")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def start_training(config: AlignmentConfig, config_class: type, model=None, tokenizer=None):
    """``(model, tokenizer, parallel)``: ``config`` checked to be a ``config_class``, the model and tokenizer
    (:func:`load_for_training`) and the FLORES dev parallel sentences of its languages (held-out tail removed)."""
    if not isinstance(config, config_class):
        raise ValueError(f"config: expected {config_class.__name__}, got {type(config).__name__}")
    model, tokenizer = load_for_training(config, model, tokenizer)
    return model, tokenizer, parallel_sentences(config.languages, config.held_out, config.max_sentences)


def data_record(config: AlignmentConfig, parallel: dict[str, list[str]], rows: list[dict], **extra) -> dict:
    """The ``data`` entry of ``training_metadata.json``: source, sentence and example counts, per-language
    sentence counts, plus the method's own ``extra`` fields."""
    return {"source": "FLORES-200 dev", "n_sentences": len(parallel["en"]), "n_train_examples": len(rows), **extra,
            "languages": {lang: len(parallel[lang]) for lang in config.languages}}


def lora_config(config: AlignmentConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")


def trainer_arguments(config: AlignmentConfig, output_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments shared by ``TrainingArguments`` / ``SFTConfig`` / ``DPOConfig``."""
    return dict(
        output_dir=str(Path(output_dir) / CHECKPOINTS),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=min(5, config.max_steps // 10),
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=False,
        dataloader_num_workers=0,
        bf16=False,
        fp16=False,
        # TRL's configs turn activation checkpointing on by default; a 270M model does not need
        # it and recomputing activations costs ~30% time on CPU. Enable it for large models on GPUs.
        activation_checkpointing=config.gradient_checkpointing,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(output_dir) / CHECKPOINTS
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def run_training(trainer, output_dir: str | Path, resume: bool) -> float:
    """``trainer.train()``, from the last checkpoint under ``output_dir`` when ``resume``; returns wall seconds."""
    checkpoint = last_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        logger.warning("resume: no checkpoint under %s, training from scratch", Path(output_dir) / CHECKPOINTS)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    return time.perf_counter() - start


def final_losses(log_history: list[dict]) -> dict[str, float]:
    """The last logged value of every training loss key (``loss``, ``lm_loss``, ``infonce_loss``, ...)."""
    out: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.endswith("loss") and not key.startswith("eval") and isinstance(value, (int, float)):
                out[key] = float(value)
    return out


def finish(trainer, config: AlignmentConfig, output_dir: str | Path, data_info: dict[str, Any],
           wall_time_s: float) -> Path:
    """Write the adapter (PEFT ``save_pretrained``), ``training_metadata.json`` and README.md."""
    from interventions.models import model_id

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    model.save_pretrained(str(out))
    if not (out / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"{out}: PEFT did not write adapter_model.safetensors")
    history = trainer.state.log_history
    metadata = {
        "method": config.method,
        "config": config.to_dict(),
        "base_model": model_id(model) or config.model,
        "languages": list(config.languages),
        "data": data_info,
        "steps": int(trainer.state.global_step),
        "seed": config.seed,
        "final_losses": final_losses(history),
        "loss_history": [{k: v for k, v in e.items() if k == "step" or k.endswith("loss")}
                         for e in history if any(k.endswith("loss") for k in e)],
        "wall_time_s": round(wall_time_s, 2),
        "versions": versions(),
    }
    write_metadata(out, metadata)
    write_model_card(out, metadata)
    return out
