"""Configuration dataclasses for the three cross-lingual alignment (CLA) methods.

Defaults are sized for google/gemma-3-270m on 2 CPU cores (each adapter trains in well under
10 minutes). Every field is plain JSON data, so a config round-trips through
``training_metadata.json`` and through recipe files (``from_dict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from evaluate.loaders import FLORES_CODES

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class AlignmentConfig:
    """Fields shared by every method.

    ``languages`` are the non-English languages (ISO 639-1) aligned to English. Training data come
    only from FLORES-200 ``dev`` minus a deterministic held-out slice of ``held_out`` sentences
    (the last ones of the file); FLORES ``devtest`` and the evaluation tasks are never used.
    ``max_steps`` optimizer steps; a checkpoint every ``save_steps`` steps under
    ``output_dir/checkpoints`` (``resume=True`` continues from the last one).
    """

    model: str = "gemma-3-270m"
    languages: tuple[str, ...] = ("ar", "es", "id", "ko", "zh")
    max_steps: int = 60
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    max_length: int = 48
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
    seed: int = 0
    save_steps: int = 10
    logging_steps: int = 5
    held_out: int = 97
    max_sentences: int | None = None  # cap on FLORES dev lines used (None: all minus held_out)
    gradient_checkpointing: bool = False  # True for multi-billion-parameter models on GPUs

    method = "base"

    def __post_init__(self) -> None:
        self.languages = tuple(self.languages)
        self.target_modules = tuple(self.target_modules)
        if not self.languages:
            raise ValueError(f"{type(self).__name__}.languages: expected at least one language code")
        bad = [lang for lang in self.languages if lang not in FLORES_CODES or lang == "en"]
        if bad:
            raise ValueError(f"{type(self).__name__}.languages: expected non-English codes from "
                             f"{sorted(set(FLORES_CODES) - {'en'})}, got {bad}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "lora_r", "save_steps",
                     "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name}: expected a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"{type(self).__name__}.learning_rate: expected > 0, got {self.learning_rate!r}")
        if not 0 <= self.held_out < 997:
            raise ValueError(f"{type(self).__name__}.held_out: expected 0 <= held_out < 997, got {self.held_out!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["method"] = self.method
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlignmentConfig":
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"method: {cls.__name__} expects {cls.method!r}, got {method!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected some of {sorted(names)}")
        return cls(**data)


@dataclass
class MultilingualSFTConfig(AlignmentConfig):
    """TRL ``SFTTrainer`` + LoRA (attention + MLP) on instruction data from FLORES dev: translation
    to and from English and same-language continuation, loss on the completion only.

    Full scale on a GPU (e.g. a 7B model, bf16): ``max_steps=2000, batch_size=16,
    gradient_accumulation_steps=4, max_length=512, lora_r=16, lora_alpha=32, learning_rate=1e-4``,
    with a larger parallel corpus than FLORES dev.
    """

    max_length: int = 96  # a translation instruction holds both sentences
    method = "multilingual_sft"


@dataclass
class MidAlignConfig(AlignmentConfig):
    """MidAlign (Liu & Niehues 2025): batches alternate between the language-modelling loss
    (even optimizer steps) and a symmetric InfoNCE loss (odd steps) on mean-pooled, non-pad hidden
    states of decoder layer ``layer`` (output of that layer; ``None`` = ``num_layers // 2``) for
    (English, L) parallel sentences, ``temperature`` 0.1, in-batch negatives. LoRA on attention
    and MLP projections.

    Full scale on a GPU: ``max_steps=3000, batch_size=32, max_length=256, lora_r=16,
    lora_alpha=32, learning_rate=1e-4`` (larger in-batch negatives help the contrastive term).
    """

    layer: int | None = None
    temperature: float = 0.1
    alignment_weight: float = 1.0
    center: str = "batch"
    """``"batch"``: subtract the batch mean (over the English and L rows together) from the pooled states
    before the cosines; ``"none"``: the paper's loss as written. A departure from the paper, on by default:
    on gemma-3-270m the pooled middle-layer states of unrelated sentences have cosine ~0.995 (a huge shared
    component), so the uncentred loss sits at ln(batch) and does not learn (README, "MidAlign")."""
    method = "midalign"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"MidAlignConfig.temperature: expected > 0, got {self.temperature!r}")
        if self.batch_size < 2:
            raise ValueError("MidAlignConfig.batch_size: InfoNCE needs in-batch negatives, expected >= 2")
        if self.center not in ("batch", "none"):
            raise ValueError(f"MidAlignConfig.center: expected 'batch' or 'none', got {self.center!r}")


@dataclass
class CLOConfig(AlignmentConfig):
    """CLO (Lee et al. 2025): TRL ``DPOTrainer`` on cross-lingual preference pairs (prompt in
    English: chosen English, rejected L; prompt in L: chosen L, rejected English) plus
    ``nll_weight`` x NLL on the chosen L responses only. LoRA on attention projections only.

    Full scale on a GPU: ``max_steps=1000, batch_size=16, gradient_accumulation_steps=4,
    max_length=512, beta=0.1, nll_weight=1.0, lora_r=16, lora_alpha=32, learning_rate=5e-5``.
    """

    beta: float = 0.1
    nll_weight: float = 1.0
    batch_size: int = 4
    learning_rate: float = 1e-4
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    method = "clo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"CLOConfig.beta: expected > 0, got {self.beta!r}")
        if self.nll_weight < 0:
            raise ValueError(f"CLOConfig.nll_weight: expected >= 0, got {self.nll_weight!r}")


CONFIGS: dict[str, type[AlignmentConfig]] = {
    "multilingual_sft": MultilingualSFTConfig, "sft": MultilingualSFTConfig,
    "midalign": MidAlignConfig, "clo": CLOConfig,
}


def config_for(method: str, **overrides: Any) -> AlignmentConfig:
    """The config dataclass of ``method`` with ``overrides`` applied (unknown fields are refused)."""
    if method not in CONFIGS:
        raise ValueError(f"method: expected one of {sorted(CONFIGS)}, got {method!r}")
    return CONFIGS[method].from_dict({k: v for k, v in overrides.items() if v is not None})
