"""The recipe: one YAML file mapped onto one config dataclass per stage (TRL style).

``load_recipe(path, overrides)`` reads the YAML (:mod:`recipes.yaml_io`), applies ``--set a.b=value``
overrides, converts every section into its dataclass with strict type checks (:mod:`recipes.convert`), and
validates the whole recipe (:mod:`recipes.validate` and :mod:`recipes.checks`: cross-field rules, task x
language support, Hub ids, layers against the model's known depth) without loading a model. Anything wrong
raises one :class:`RecipeError` naming the field. The schema offers only what the stages honour: vectors
are computed at ``block_output`` from the named contrast data (no contrast files).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Union

LANGUAGES = ("en", "ar", "es", "id", "ko", "zh", "el", "fa", "am")
TASKS = ("global_mmlu", "global_mmlu_cloze", "blend", "locale_probe", "fact_probe")
from .convert import build  # noqa: E402
from .errors import RecipeError  # noqa: E402,F401  (re-exported: every stage raises RecipeError)
from .variants import VARIANTS  # noqa: E402  (one table of variants: recipes.variants)
METHODS = ("none", "multilingual_sft", "midalign", "clo")
COMPONENTS = ("block_output",)
"""Components the steering stage computes vectors at (``interventions.vectors`` collects block_output)."""
EN_DATA = ("flores",)
"""Named contrast data of EN-transfer vectors: parallel FLORES-200 dev sentences (English vs L)."""
LOC_DATA = ("blend", "locale_probe")
"""Named contrast data of LOC vectors: tasks with explicit-cue / cue-less twin prompts (extract split)."""

Language = Literal["en", "ar", "es", "id", "ko", "zh", "el", "fa", "am"]
Task = Literal["global_mmlu", "global_mmlu_cloze", "blend", "locale_probe", "fact_probe"]
Variant = Literal[VARIANTS]
Auto = Literal["auto"]
EnData = Literal["flores"]
LocData = Literal["blend", "locale_probe"]


# ---------------------------------------------------------------- stage configs


@dataclass
class ModelConfig:
    name: str = "gemma-3-270m"
    """The embedded ``gemma-3-270m``, a Hub id or a local directory."""
    revision: Optional[str] = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: Optional[str] = None
    device_map: Optional[str] = None


@dataclass
class AlignmentConfig:
    method: Literal["none", "multilingual_sft", "midalign", "clo"] = "none"
    """Train this CLA method (``none``: no adapter unless ``adapter`` loads one)."""
    adapter: Optional[str] = None
    """Load this adapter (directory or Hub id) instead of training one."""
    languages: Optional[list[Language]] = None
    """Training languages (default: the evaluation languages other than English)."""
    max_steps: Optional[int] = None
    """Knobs left null take the method's own default (alignment.config)."""
    learning_rate: Optional[float] = None
    batch_size: Optional[int] = None
    lora_r: Optional[int] = None
    lora_alpha: Optional[int] = None
    n: Optional[int] = None
    """FLORES dev sentences per language used for training (the trainer's max_sentences)."""
    seed: Optional[int] = None
    """Default: the recipe seed."""


@dataclass
class VectorConfig:
    enabled: bool = True
    layer: Union[int, Auto] = "auto"
    alpha: Union[float, Auto] = "auto"
    """Strength in multiples of the estimated mean difference (1: add exactly the estimated difference, 0: the
    unsteered model), or ``auto``: chosen by cross-validation with ``layer: auto`` (steering.selection)."""
    data: Union[str, list[str], None] = None
    """Named contrast data, one or a list (no files): see the EN / LOC subclasses."""
    n: Optional[int] = None
    """Contrast prompts per language (EN default 64 FLORES sentences; LOC default all twins). With auto
    selection the LOC contrast of each fold is the explicit twins of the training folds' items (n unused)."""
    reduce: Optional[Literal["mean", "last"]] = None
    """How token activations become one per prompt (default: mean for EN, last for LOC)."""
    positions: Optional[Literal["all", "prompt", "generated", "last"]] = None
    """Where the vector is added (default: the vector's own, EN the prompt, LOC the last prompt token)."""
    NOTES: ClassVar[dict] = {"data": "named contrast data only: contrast files are not supported"}


@dataclass
class EnVectorConfig(VectorConfig):
    data: Union[EnData, list[EnData], None] = None
    """``flores``: parallel FLORES-200 dev sentences, English vs L (the default)."""


@dataclass
class LocVectorConfig(VectorConfig):
    data: Union[LocData, list[LocData], None] = None
    """``blend`` / ``locale_probe``: explicit-cue vs cue-less twin prompts (default: both)."""


# Per-vector defaults filled in after parsing, so the resolved recipe (and its hashes) is explicit.
VECTOR_DEFAULTS = {"en": {"data": "flores", "reduce": "mean", "n": 64},
                   "loc": {"reduce": "last"}}


@dataclass
class SelectionConfig:
    """Cross-validated choice of (layer, alpha) for ``auto`` (evaluate.crossfit): k folds disjoint by group."""

    folds: int = 5
    tolerance: float = 0.0
    """Largest mean margin loss (nats) on the other axis a chosen cell may cost on its selection folds."""
    max_kl: Optional[float] = None
    """KL budget (nats, next token on neutral FLORES devtest text) a chosen cell may not exceed (null: none)."""
    neutral_n: int = 20
    """FLORES devtest sentences per language for the KL of every cell."""


@dataclass
class SteeringConfig:
    load: Optional[str] = None
    """Load an intervention directory (path or Hub id) instead of computing vectors."""
    component: Literal["block_output"] = "block_output"
    """Where vectors are computed and added (a loaded directory names its own components)."""
    NOTES: ClassVar[dict] = {"component": "the steering stage computes vectors at block_output only"}
    method: Literal["mean_difference", "pca"] = "mean_difference"
    en: EnVectorConfig = field(default_factory=EnVectorConfig)
    loc: LocVectorConfig = field(default_factory=LocVectorConfig)
    layers: Optional[list[int]] = None
    """Layer grid for ``layer: auto`` (default: every layer)."""
    alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 1.5, 2.0])
    """Strength grid for ``alpha: auto`` (alpha = 0, the unsteered model, is always a candidate)."""
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig())
    compute_on: Literal["base", "cla"] = "base"
    """Fixed layer/alpha only: compute vectors on the base model or on the aligned (CLA) model. With auto
    selection every evaluated model (base, cla) gets its own vectors, selection and out-of-fold plane."""


@dataclass
class EvaluateConfig:
    tasks: list[Task] = field(default_factory=lambda: ["global_mmlu_cloze", "blend"])
    languages: list[Language] = field(default_factory=lambda: ["ar", "es", "id", "ko", "zh"])
    variants: list[Variant] = field(default_factory=lambda: ["base", "base+en", "base+loc", "base+surgical"])
    """Default: no adapter variants, since alignment defaults to none (add cla* with an adapter)."""
    split: Literal["test", "extract", "all"] = "test"
    n: Optional[int] = 50
    """Question groups per transfer task x language: a seeded sample stratified by relation/subject with the
    share of one gold answer capped (evaluate.sampling; null: all)."""
    n_localization: Optional[int] = None
    """Question groups per localization task x language, sampled the same way (null: all)."""
    batch_size: int = 8
    bootstrap: int = 1000
    """Bootstrap resamples for confidence intervals (at least 1)."""


@dataclass
class AnalysisConfig:
    enabled: bool = False
    """Representations by layer (PCA grid, language separation, FLORES retrieval) and cos(v_EN, v_LOC) per layer."""
    n: int = 48
    """First n parallel FLORES devtest sentences per language."""
    layers: Optional[list[int]] = None
    """Layers drawn in the PCA grid (default: every layer); the CSVs cover every layer."""


@dataclass
class ExpertsConfig:
    enabled: bool = False
    """Find language-expert units (Suau et al.; Sundar et al., ACL 2025) and save them as set-kind interventions."""
    languages: Optional[list[Language]] = None
    """Target languages (default: the evaluation languages other than English)."""
    contrast: Optional[list[Language]] = None
    """Pool of positives/negatives (default: English plus the target languages)."""
    k: int = 10
    """Experts forced in each saved intervention directory."""
    ks: Optional[list[int]] = None
    """k values of the retrieval report (default: [k])."""
    n: int = 200
    """FLORES dev sentences per language for finding."""
    components: list[Literal["mlp_hidden", "attention_heads"]] = field(default_factory=lambda: ["mlp_hidden"])
    separate_components: bool = False
    """Rank and force each component's units separately (from one finding pass), instead of all of them together."""
    controls: list[Literal["random", "variance"]] = field(default_factory=list)
    """Matched control sets saved and measured like the experts (:data:`interventions.experts.CONTROLS`)."""
    apply_to: Union[Literal["source", "both"], list[Literal["source", "both"]]] = "both"
    """Force the experts while encoding the L sentences only (source) or L and English (both), or a list of both."""
    retrieval_n: int = 200
    """FLORES devtest sentences per language for retrieval before/after (0: no retrieval report)."""
    bins: int = 512
    """Histogram bins per unit for the streaming AP."""
    side_effects: Union[bool, list[int]] = False
    """Also measure script share of continuations and held-out perplexity before/after, for every set: at every k
    of ks (true), or at the listed ks only (e.g. [10]: the sweep's side effects at one k cost a fraction of every k)."""

    def __post_init__(self):
        """Single-field rules of the section (types are checked by :func:`_build`)."""
        for name, least in (("k", 1), ("n", 2), ("bins", 2)):
            value = getattr(self, name)
            if isinstance(value, int) and value < least:
                raise RecipeError(f"experts.{name}", f"expected an int >= {least}, got {value}")
        if isinstance(self.retrieval_n, int) and not 0 <= self.retrieval_n <= 500:
            raise RecipeError("experts.retrieval_n", f"expected 0..500 devtest sentences (0: no retrieval report), "
                                                     f"got {self.retrieval_n}")
        if self.ks is not None and not self.ks:
            raise RecipeError("experts.ks", "expected a non-empty list of k values, or null for [k]")
        for i, k in enumerate(self.ks or []):
            if isinstance(k, int) and k < 1:
                raise RecipeError(f"experts.ks[{i}]", f"expected an int >= 1, got {k}")
        if isinstance(self.side_effects, list):
            allowed = self.ks if self.ks is not None else [self.k]
            stray = [k for k in self.side_effects if not isinstance(k, bool) and k not in allowed]
            if not self.side_effects or stray:
                raise RecipeError("experts.side_effects", f"expected true, false or a non-empty list of ks among "
                                                          f"{allowed}, got {self.side_effects}")
        if isinstance(self.controls, list) and len(set(self.controls)) != len(self.controls):
            raise RecipeError("experts.controls", f"expected a list without duplicates, got {self.controls}")
        if not self.components or len(set(self.components)) != len(self.components):
            raise RecipeError("experts.components",
                              f"expected a non-empty list without duplicates, got {self.components}")
        if self.languages is not None and (not self.languages or "en" in self.languages):
            raise RecipeError("experts.languages", f"expected a non-empty list of languages other than 'en' (the "
                                                   f"retrieval pivot), got {self.languages}")


@dataclass
class ReportConfig:
    enabled: bool = True
    formats: list[Literal["md", "json", "csv"]] = field(default_factory=lambda: ["md", "json"])
    plots: bool = True
    title: Optional[str] = None


@dataclass
class PublishConfig:
    enabled: bool = False
    repo_id: Optional[str] = None
    private: bool = True
    push: list[Literal["intervention", "adapter", "report"]] = field(
        default_factory=lambda: ["intervention", "report"])
    token_env: str = "HF_TOKEN"
    """The token is read from this environment variable, never from the recipe."""
    commit_message: str = "Upload surgical steering intervention"

    REFUSED: ClassVar[dict] = {"token": "never put a token in a recipe; it is read from the environment variable "
                                        "named by publish.token_env (default HF_TOKEN)"}


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STAGES = ("model", "alignment", "steering", "analysis", "experts", "evaluate", "report", "publish")

def recipe_from_dict(data: Any, *, name: str | None = None) -> Recipe:
    """Convert a parsed mapping into a :class:`Recipe` (types only; see ``validate_recipe``)."""
    if isinstance(data, dict) and "name" not in data and name is not None:
        data = {**data, "name": name}
    recipe = build(Recipe, data, "")
    if recipe.steering.loc.data is None:  # default LOC contrast: the localization tasks evaluated, else both
        recipe.steering.loc.data = [t for t in recipe.evaluate.tasks if t in LOC_DATA] or list(LOC_DATA)
    for which, defaults in VECTOR_DEFAULTS.items():
        vec = getattr(recipe.steering, which)
        for key, value in defaults.items():
            if getattr(vec, key) is None:
                setattr(vec, key, list(value) if isinstance(value, list) else value)
    return recipe
