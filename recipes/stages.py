"""Stage functions: each gets the run context, its plan entry and a fresh (temporary) output dir.

Heavy modules are imported inside the functions, so ``--dry-run`` never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .analysis_stage import run_analysis
from .artifacts import AdapterInfo, ModelInfo, SteeringResult, VectorSelection
from .crossfit_stage import crossfit_evaluation, evaluate_crossfit, report_crossfit, run_crossfit, uses_crossfit
from .experts_stage import run_experts
from .plan import Plan
from .run_dir import StagePlan
from .schema import Recipe, RecipeError
from .inputs import looks_like_path
from .checks import check_layers


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")


class RunContext:
    """What stages share: the recipe, the plan, the accelerate state and the lazily loaded model."""

    def __init__(self, recipe: Recipe, plan: Plan, state=None):
        self.recipe = recipe
        self.plan = plan
        self.state = state
        self._model = None
        self._tokenizer = None
        self._adapter_model = None

    def seed(self, offset: int = 0) -> None:
        import random

        import numpy as np
        import torch

        random.seed(self.recipe.seed + offset)
        np.random.seed(self.recipe.seed + offset)
        torch.manual_seed(self.recipe.seed + offset)

    @property
    def model(self):
        if self._model is None:
            from interventions.models import load_model

            m = self.recipe.model
            self._model = load_model(m.name, dtype=m.dtype, device=m.device, device_map=m.device_map,
                                     revision=m.revision)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from interventions.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.recipe.model.name, revision=self.recipe.model.revision)
        return self._tokenizer

    def output(self, stage: str) -> Path | None:
        """The committed directory of an upstream stage (None when the stage is off)."""
        st = self.plan.stages[stage]
        return st.directory if st.active else None

    def adapter_source(self) -> str | None:
        """Where the alignment adapter lives: the trained/copied directory or a Hub id."""
        out = self.output("alignment")
        if out is None:
            return None
        return AdapterInfo.load(out).location(out)

    def aligned_model(self):
        """The base model with the alignment adapter loaded on top (unmerged), cached."""
        if self._adapter_model is None:
            source = self.adapter_source()
            if source is None:
                raise RuntimeError("no alignment adapter in this recipe")
            from alignment.adapters import load_adapter

            self._adapter_model = load_adapter(self.model, source)
        return self._adapter_model


def _model_shape(model) -> tuple[int, int, str]:
    from interventions.components import hidden_size, num_layers

    return num_layers(model), hidden_size(model), model.config.model_type


def copy_user_dir(source: str, dst: Path, field: str) -> None:
    """Copy the user's directory ``source`` (``steering.load`` / ``alignment.adapter``) into the run without
    following any symlink: a symlink or special file inside it is refused (RecipeError naming ``field`` and
    the file), before anything is copied; publish would otherwise upload whatever the link points at."""
    from interventions.fsutil import UnsafePathError, copy_tree_no_symlinks

    try:
        copy_tree_no_symlinks(Path(os.path.expanduser(source)), dst)
    except UnsafePathError as err:
        raise RecipeError(field, str(err)) from None


def run_model(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    layers, hidden, model_type = _model_shape(ctx.model)
    check_layers(ctx.recipe, layers)  # deferred check for models unknown at validation time
    info = ModelInfo(name_or_path=ctx.recipe.model.name, model_type=model_type, num_hidden_layers=layers,
                     hidden_size=hidden, dtype=ctx.recipe.model.dtype, revision=ctx.recipe.model.revision)
    info.save(out)
    return {"model": info.to_dict()}


def run_alignment(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    a = ctx.recipe.alignment
    if a.adapter is not None:
        local = looks_like_path(a.adapter)
        if local:
            copy_user_dir(a.adapter, out / AdapterInfo.ADAPTER_DIR, "alignment.adapter")
            # training state, not the adapter
            shutil.rmtree(out / AdapterInfo.ADAPTER_DIR / "checkpoints", ignore_errors=True)
        AdapterInfo(source=a.adapter, local=local, trained=False, method=None).save(out)
        return {"adapter": a.adapter}
    from alignment import config_for, train

    cfg = stage.config
    config = config_for(a.method, model=ctx.recipe.model.name, languages=cfg["languages"],
                        max_steps=a.max_steps, learning_rate=a.learning_rate, batch_size=a.batch_size,
                        lora_r=a.lora_r, lora_alpha=a.lora_alpha, max_sentences=a.n, seed=cfg["seed"])
    ctx.seed()
    # The trainer loads its own copy of the model (LoRA injection would change ctx.model in place);
    # under ``accelerate launch`` TRL/Trainer spread training over the processes and save on the main one.
    train(config, out / AdapterInfo.ADAPTER_DIR, tokenizer=ctx.tokenizer)
    AdapterInfo(source=str(stage.directory / AdapterInfo.ADAPTER_DIR), local=True, trained=True,
                method=a.method).save(out)
    return {"adapter": "trained", "method": a.method}


def run_steering(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    from interventions.config import InterventionConfig

    s = ctx.recipe.steering
    if s.load is not None:
        if looks_like_path(s.load):  # copied (symlinks refused) before anything reads it
            copy_user_dir(s.load, out / "intervention", "steering.load")
            InterventionConfig.from_pretrained(out / "intervention", model=ctx.model)  # refuses a config that does not fit
        else:
            config = InterventionConfig.from_pretrained(s.load, model=ctx.model)
            config.save_pretrained(out / "intervention")
        SteeringResult.loaded(s.load).save(out)
        return {"source": s.load}
    if uses_crossfit(ctx.recipe):  # layer/alpha auto: cross-validated selection and the out-of-fold plane
        return run_crossfit(ctx, stage, out)
    ctx.seed()
    model = ctx.aligned_model() if s.compute_on == "cla" else ctx.model
    config, selection = compute_interventions(ctx, model, out)
    config.save_pretrained(out / "intervention", model=model)
    result = SteeringResult(computed=True, source=None, protocol="fixed", selection=selection,
                            primary_run=s.compute_on, intervention=True, grid_rows=None)
    result.save(out)
    return {"selection": result.selection_dicts()}


def compute_interventions(ctx: RunContext, model, out: Path):
    """EN-transfer and LOC vectors per evaluated non-English language at the recipe's fixed layer and alpha
    (``auto`` goes through :mod:`recipes.crossfit_stage` instead)."""
    from interventions.config import InterventionConfig
    from interventions.vector_io import save_vectors
    from evaluate.contrasts import en_transfer_vectors, loc_vectors

    s = ctx.recipe.steering
    languages = [x for x in ctx.recipe.evaluate.languages if x != "en"]
    interventions, selection = [], {}
    for which in ("en", "loc"):
        vec = getattr(s, which)
        if not vec.enabled:
            continue
        data = [vec.data] if isinstance(vec.data, str) else list(vec.data)  # named data only (the schema)
        for language in languages:
            if which == "en":
                found = en_transfer_vectors(model, ctx.tokenizer, language, n=vec.n, reduce=vec.reduce,
                                            method=s.method)
            else:
                found = loc_vectors(model, ctx.tokenizer, language, tasks=tuple(data), n=vec.n, reduce=vec.reduce,
                                    method=s.method)
            found.source.update(role="en_transfer" if which == "en" else "loc_cultural", language=language)
            save_vectors(found, out / "vectors")
            iv = found.intervention(vec.layer, alpha=vec.alpha, positions=vec.positions)
            iv.source.update(selected="fixed in the recipe", steered=True)
            interventions.append(iv)
            selection[found.name] = VectorSelection(layer=vec.layer, alpha=vec.alpha, positions=iv.positions,
                                                    steered=True, kind=which, language=language,
                                                    selected="fixed in the recipe")
    if not interventions:  # validation refuses this; never commit an empty steering stage as complete
        raise RecipeError("evaluate.languages", f"no intervention to compute: EN-transfer and LOC vectors are made "
                                                f"per language other than en, got {ctx.recipe.evaluate.languages}")
    return InterventionConfig.for_model(model, interventions, revision=ctx.recipe.model.revision), selection


def run_evaluate(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    if crossfit_evaluation(ctx.recipe):
        return evaluate_crossfit(ctx, stage, out)
    from .evaluation import run_evaluate as run

    return run(ctx, stage, out)


def run_report(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    if crossfit_evaluation(ctx.recipe):
        return report_crossfit(ctx, stage, out)
    from .evaluation import run_report as run

    return run(ctx, stage, out)


def publish_folders(ctx: RunContext) -> list[tuple[Path, str]]:
    """(local folder, path in repo) pairs that ``publish`` uploads, per ``publish.push``."""
    p = ctx.recipe.publish
    folders: list[tuple[Path, str]] = []
    if "intervention" in p.push:
        steering = ctx.output("steering")
        if steering is None or not (steering / "intervention").is_dir():
            raise RuntimeError("publish: no intervention directory was produced by the steering stage")
        folders.append((steering / "intervention", ""))
    if "adapter" in p.push:
        source = ctx.adapter_source()
        if source is None or not Path(source).is_dir():
            raise RuntimeError(f"publish: the adapter is not a local directory ({source}); push it from its "
                               "own Hub repo instead")
        folders.append((Path(source), "adapter"))
    return folders


def run_publish(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    from interventions.hub import push_to_hub

    p = ctx.recipe.publish
    folders = publish_folders(ctx)
    cards = []
    if "report" in p.push:
        report = ctx.output("report")
        cards = sorted(report.glob("*.md")) if report else []
        if not cards:
            raise RuntimeError("publish: 'report' in publish.push but the report stage wrote no .md file")
    url, commits = push_to_hub(p.repo_id, folders, [(cards[0], "README.md")] if cards else [], private=p.private,
                               token=os.environ.get(p.token_env) or None, commit_message=p.commit_message)
    record = {"repo_id": p.repo_id, "url": url, "commits": commits}
    write_json(out / "publish.json", record)
    return record


STAGE_FUNCTIONS: dict[str, Callable[[RunContext, StagePlan, Path], dict]] = {
    "model": run_model, "alignment": run_alignment, "steering": run_steering, "analysis": run_analysis,
    "experts": run_experts, "evaluate": run_evaluate, "report": run_report, "publish": run_publish,
}
