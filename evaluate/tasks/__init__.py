"""Evaluation tasks: each turns a data set into :class:`Item` objects and computes point metrics.

Registered tasks (``get_task(name)``; ``list_tasks()``):

==================== ============ ===============================================================
name                 kind         data
==================== ============ ===============================================================
global_mmlu          transfer     Global-MMLU-Lite CA subset, letter scoring (A-D at the last position)
global_mmlu_cloze    transfer     same questions, option texts scored (length-normalised)
fact_probe           transfer     BMLAMA-53 single-answer relations (P36 P1376 P37 P30 P103)
blend                localization BLEnD: local vs US top answer, implicit (country removed) / explicit
locale_probe         localization the project's probe: implicit / explicit / English control
==================== ============ ===============================================================

``task.items(language, split="test"|"extract"|"all", cue=None)`` -> items sorted by id; the split is a
seeded function of the item's ``group`` (parallel items and twins share a split).
``task.metrics(items, chosen)`` -> point metrics (+ ``chance``); ``task.item_outcomes`` gives the per-item
0/1 values for bootstrap CIs (the continuous primary outcome, the log-prob margin, is
:func:`evaluate.margins.item_margin`). Subsets are drawn with :func:`evaluate.sampling.stratified_sample`
(seeded, stratified by ``meta["relation"]`` / ``["subject"]`` / ``["topic"]``, whole groups), never as the
first n items by id.
"""

from .base import (ANSWER_CUE, CUES, DEFAULT_SEED, SPLITS, Item, Task, answer_cue, as_choices, continuation,
                   get_task, list_tasks, register_task, split_of)
from . import global_mmlu, blend, fact_probe, locale_probe  # noqa: F401,E402  (register the tasks)

__all__ = ["ANSWER_CUE", "CUES", "DEFAULT_SEED", "SPLITS", "Item", "Task", "answer_cue", "as_choices",
           "continuation", "get_task", "list_tasks", "register_task", "split_of"]
