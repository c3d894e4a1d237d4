"""Cross-lingual alignment (CLA) adapters trained with TRL + PEFT, and loading them.

Three methods, each a config dataclass and a trainer whose output is a PEFT adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors`` + ``training_metadata.json`` + README.md):

- ``multilingual_sft``: TRL ``SFTTrainer`` on FLORES-200 dev translation/continuation instructions;
- ``midalign`` (Liu & Niehues 2025): InfoNCE on middle-layer representations of parallel sentences,
  alternating with the LM loss (a ``transformers.Trainer`` subclass);
- ``clo`` (Lee et al. 2025): TRL ``DPOTrainer`` on cross-lingual preference pairs + NLL on L responses.

``python -m alignment train midalign --languages ar es id ko zh --out DIR`` trains from the shell.
"""

from __future__ import annotations

from .adapters import load_adapter, push_adapter, read_metadata
from .config import CLOConfig, MidAlignConfig, MultilingualSFTConfig, config_for

__all__ = ["CLOConfig", "MidAlignConfig", "MultilingualSFTConfig", "config_for", "load_adapter", "push_adapter",
           "read_metadata", "train", "TRAINERS"]


def _trainers():
    from .clo import train_clo
    from .midalign import train_midalign
    from .sft import train_multilingual_sft

    return {"multilingual_sft": train_multilingual_sft, "midalign": train_midalign, "clo": train_clo}


TRAINERS = ("multilingual_sft", "midalign", "clo")


def train(config, output_dir, *, model=None, tokenizer=None, resume: bool = False):
    """Train the adapter that ``config`` describes (its class picks the method) into ``output_dir``."""
    trainers = _trainers()
    if config.method not in trainers:
        raise ValueError(f"config.method: expected one of {sorted(trainers)}, got {config.method!r}")
    return trainers[config.method](config, output_dir, model=model, tokenizer=tokenizer, resume=resume)
