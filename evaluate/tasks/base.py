"""Items, the Task base class, seeded group splits and the shared text helpers.

Every task turns a dataset into :class:`Item` objects (one prompt, a few candidate continuations,
score = log P(candidate | prompt)) and computes point metrics from per-item choices.

Splits: each item carries a ``group`` (the same fact/question in every language, and the
implicit/explicit/control twins of one question, share it). The split is a pure function of
``(seed, group)``, so parallel items and twins always land in the same split, and adding or
removing other items never moves an item between ``extract`` and ``test``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

SPLITS = ("extract", "test", "all")
CUES = ("implicit", "explicit", "control")
DEFAULT_SEED = 0

# Languages whose script is written without spaces: a candidate follows the prompt directly.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja"})

# "Answer:" cue per language (question-answer prompts end with it).
ANSWER_CUE = {
    "en": "Answer:", "ar": "الإجابة:", "es": "Respuesta:", "id": "Jawaban:", "ko": "답:",
    "zh": "答案：", "ja": "答え：", "el": "Απάντηση:", "fa": "پاسخ:", "am": "መልስ:",
}


def continuation(language: str, text: str) -> str:
    """``text`` as a continuation of a prompt in ``language``: zh/ja glue on, others get one leading space.

    The one place where the separator convention lives; every task builds candidates through it.
    """
    text = text.strip()
    return text if language in NO_SPACE_LANGUAGES else " " + text


def answer_cue(language: str) -> str:
    if language not in ANSWER_CUE:
        raise ValueError(f"language: no answer cue for {language!r}; known: {sorted(ANSWER_CUE)}")
    return ANSWER_CUE[language]


@dataclass(frozen=True)
class Item:
    id: str                 # stable, unique, e.g. "blend/ko/Al-en-06/implicit"
    task: str               # registered task name
    language: str           # ISO 639-1
    prompt: str             # text the candidates continue
    candidates: tuple[str, ...]  # continuations; score = log P(candidate | prompt)
    gold: int | None = None      # index of the correct candidate (transfer tasks)
    local: int | None = None     # index of the local-culture answer (localization tasks)
    us: int | None = None        # index of the US/English-culture answer
    group: str = ""              # same for parallel items across languages and for twins
    cue: str = "implicit"        # implicit | explicit | control
    scoring: str = "cloze"       # "cloze" (candidate log-likelihood) or "letter" (next-token logits at last position)
    meta: Mapping = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.candidates)
        if n < 1:
            raise ValueError(f"Item {self.id}: candidates is empty")
        for name in ("gold", "local", "us"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < n:
                raise ValueError(f"Item {self.id}: {name}={v} is not an index into {n} candidates")
        if self.scoring not in ("cloze", "letter"):
            raise ValueError(f"Item {self.id}: scoring must be 'cloze' or 'letter', got {self.scoring!r}")
        if self.cue not in CUES:
            raise ValueError(f"Item {self.id}: cue must be one of {CUES}, got {self.cue!r}")


def split_of(group: str, seed: int = DEFAULT_SEED, extract_fraction: float = 0.3) -> str:
    """'extract' or 'test' for a group, deterministic in (seed, group).

    Groups are prefixed by their data set (e.g. "global_mmlu/astronomy/test/58"), so two tasks over the
    same data (``global_mmlu`` and ``global_mmlu_cloze``) split the same questions the same way.
    """
    if not 0.0 <= extract_fraction <= 1.0:
        raise ValueError(f"extract_fraction: expected a number in [0, 1], got {extract_fraction!r}")
    h = hashlib.sha256(f"{seed}\x1f{group}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "extract" if u < extract_fraction else "test"


def _choice_of(c: Any) -> int:
    for attr in ("choice", "chosen"):
        if hasattr(c, attr):
            return int(getattr(c, attr))
    return int(c)


def as_choices(items: Sequence[Item], chosen: Any) -> dict[str, int]:
    """Normalise choices to {item_id: candidate index}.

    Accepts a mapping item_id -> index; a sequence of the scorer's ``ItemScore`` (``item_id`` + ``choice``);
    or a sequence aligned with ``items`` of ints (or objects with ``choice``/``chosen``).
    """
    if isinstance(chosen, Mapping):
        return {str(k): int(v) for k, v in chosen.items()}
    chosen = list(chosen)
    if chosen and all(hasattr(c, "item_id") for c in chosen):
        return {str(c.item_id): _choice_of(c) for c in chosen}
    if len(chosen) != len(items):
        raise ValueError(f"chosen: expected a mapping item_id -> index or {len(items)} choices, got {len(chosen)}")
    return {it.id: _choice_of(c) for it, c in zip(items, chosen)}


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


class Task:
    """Base class: subclasses set ``name``, ``kind`` ('transfer' | 'localization') and implement
    ``_build(language, **options) -> list[Item]`` (all items of a language, every cue)."""

    name: str = ""
    kind: str = "transfer"
    languages: tuple[str, ...] = ()
    extract_fraction: float = 0.3

    def __init__(self, seed: int = DEFAULT_SEED, extract_fraction: float | None = None, **options):
        self.seed = seed
        if extract_fraction is not None:
            if not 0.0 <= extract_fraction <= 1.0:
                raise ValueError(f"extract_fraction: expected a number in [0, 1], got {extract_fraction!r}")
            self.extract_fraction = extract_fraction
        self.options = options
        self._cache: dict[tuple, list[Item]] = {}

    # -- items -------------------------------------------------------------------------------
    def _build(self, language: str, **options) -> list[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, item: Item) -> str:
        return split_of(item.group, self.seed, self.extract_fraction)

    def items(self, language: str, split: str = "test", cue: str | None = None, **options) -> list[Item]:
        """Items of ``language`` in ``split`` ('extract' | 'test' | 'all'), optionally one ``cue``, sorted by id."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if cue is not None and cue not in CUES:
            raise ValueError(f"cue: expected one of {CUES} or None, got {cue!r}")
        opts = {**self.options, **options}
        key = (language, tuple(sorted((k, repr(v)) for k, v in opts.items())))
        if key not in self._cache:
            built = self._build(language, **opts)
            ids = [it.id for it in built]
            if len(set(ids)) != len(ids):
                raise ValueError(f"task {self.name}: duplicate item ids for language {language!r}")
            self._cache[key] = sorted(built, key=lambda it: it.id)
        out = self._cache[key]
        if cue is not None:
            out = [it for it in out if it.cue == cue]
        if split != "all":
            out = [it for it in out if self.split(it) == split]
        return list(out)

    # -- metrics -----------------------------------------------------------------------------
    @staticmethod
    def english_id(item: Item) -> str:
        """Id of the English parallel item: ids are '{task}/{language}/...'."""
        head, lang, rest = item.id.split("/", 2)
        return f"{head}/en/{rest}"

    def item_outcomes(self, items: Sequence[Item], chosen: Any) -> dict[str, dict[str, float]]:
        """Per-item 0/1 outcome for every metric: {metric: {item_id: value}} (for bootstrap CIs).

        Items without a choice are left out. Transfer: ``accuracy`` (gold chosen) and
        ``consistency_with_en`` (same candidate as the English parallel item; only items whose
        English twin has a choice in ``chosen``). Localization: ``localization_score`` (local
        answer chosen) and ``us_rate`` (US answer chosen).
        """
        ch = as_choices(items, chosen)
        out: dict[str, dict[str, float]] = {}
        for it in items:
            if it.id not in ch:
                continue
            c = ch[it.id]
            if not 0 <= c < len(it.candidates):
                raise ValueError(f"chosen[{it.id!r}] = {c} is not an index into {len(it.candidates)} candidates")
            if self.kind == "transfer":
                if it.gold is not None:
                    out.setdefault("accuracy", {})[it.id] = float(c == it.gold)
                if it.language != "en":
                    en = self.english_id(it)
                    if en in ch:
                        out.setdefault("consistency_with_en", {})[it.id] = float(c == ch[en])
            else:
                if it.local is not None:
                    out.setdefault("localization_score", {})[it.id] = float(c == it.local)
                if it.us is not None:
                    out.setdefault("us_rate", {})[it.id] = float(c == it.us)
        return out

    def chance(self, items: Sequence[Item]) -> dict[str, float]:
        """Expected value of each metric under uniformly random choices."""
        inv = [1.0 / len(it.candidates) for it in items]
        m = _mean(inv) or 0.0
        if self.kind == "transfer":
            return {"accuracy": m, "consistency_with_en": m}
        return {"localization_score": m, "us_rate": m}

    def metrics(self, items: Sequence[Item], chosen: Any) -> dict[str, Any]:
        """Point metrics over ``items`` (means of :meth:`item_outcomes`), with ``n`` per metric and ``chance``."""
        outcomes = self.item_outcomes(items, chosen)
        names = ("accuracy", "consistency_with_en") if self.kind == "transfer" else ("localization_score", "us_rate")
        res: dict[str, Any] = {"task": self.name, "n_items": len(items)}
        for name in names:
            vals = list(outcomes.get(name, {}).values())
            res[name] = _mean(vals)
            res[f"n_{name}"] = len(vals)
        by_id = {it.id: it for it in items}
        res["chance"] = {
            name: self.chance([by_id[i] for i in outcomes.get(name, {})]).get(name) if outcomes.get(name) else None
            for name in names
        }
        return res


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task] | None = None):
    """Register a Task class/factory under ``name`` (usable as a decorator)."""
    def deco(f):
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"task name {name!r} is already registered")
        _REGISTRY[name] = f
        return f
    return deco(factory) if factory is not None else deco


def get_task(name: str, **kwargs) -> Task:
    """A fresh task instance; kwargs (seed=..., options such as country=...) go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"task: unknown task {name!r}; registered: {list_tasks()}")
    return _REGISTRY[name](**kwargs)


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)
