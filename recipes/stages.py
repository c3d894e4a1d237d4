"""Stage functions: each gets the run context, its plan entry and a fresh (temporary) output dir.

Heavy modules are imported inside the functions, so ``--dry-run`` never imports torch. A stage
whose library code is not available raises :class:`StageUnavailable` naming the module it needs.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .plan import Plan, StagePlan
from .schema import Recipe, RecipeError
from .validate import check_layers, looks_like_path


class StageUnavailable(RuntimeError):
    """The library code a stage needs is missing (``stage X requires module Y``)."""


def _require(stage: str, module: str, attr: str | None = None):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise StageUnavailable(f"stage {stage} requires module {module} (not available: {err})") from None
        raise
    if attr is not None:
        if not hasattr(mod, attr):
            raise StageUnavailable(f"stage {stage} requires {module}.{attr} (module has no such attribute)")
        return getattr(mod, attr)
    return mod


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
        info = json.loads((out / "adapter.json").read_text())
        return str(out / "adapter") if info.get("local") else info["source"]

    def aligned_model(self):
        """The base model with the alignment adapter loaded on top (unmerged), cached."""
        if self._adapter_model is None:
            source = self.adapter_source()
            if source is None:
                raise RuntimeError("no alignment adapter in this recipe")
            load_adapter = _require("alignment", "alignment.adapters", "load_adapter")
            self._adapter_model = load_adapter(self.model, source)
        return self._adapter_model


def _model_shape(model) -> tuple[int, int, str]:
    try:
        from interventions.components import hidden_size, num_layers

        return num_layers(model), hidden_size(model), model.config.model_type
    except ImportError:
        cfg = getattr(model.config, "text_config", None) or model.config
        return cfg.num_hidden_layers, cfg.hidden_size, model.config.model_type


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
    info = {"name_or_path": ctx.recipe.model.name, "model_type": model_type, "num_hidden_layers": layers,
            "hidden_size": hidden, "dtype": ctx.recipe.model.dtype, "revision": ctx.recipe.model.revision}
    write_json(out / "model.json", info)
    return {"model": info}


def run_alignment(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    a = ctx.recipe.alignment
    if a.adapter is not None:
        local = looks_like_path(a.adapter)
        if local:
            copy_user_dir(a.adapter, out / "adapter", "alignment.adapter")
            shutil.rmtree(out / "adapter" / "checkpoints", ignore_errors=True)  # training state, not the adapter
        write_json(out / "adapter.json", {"source": a.adapter, "local": local, "trained": False})
        return {"adapter": a.adapter}
    config_for = _require("alignment (train)", "alignment", "config_for")
    train = _require("alignment (train)", "alignment", "train")
    cfg = stage.config
    config = config_for(a.method, model=ctx.recipe.model.name, languages=cfg["languages"],
                        max_steps=a.max_steps, learning_rate=a.learning_rate, batch_size=a.batch_size,
                        lora_r=a.lora_r, lora_alpha=a.lora_alpha, max_sentences=a.n, seed=cfg["seed"])
    ctx.seed()
    # The trainer loads its own copy of the model (LoRA injection would change ctx.model in place);
    # under ``accelerate launch`` TRL/Trainer spread training over the processes and save on the main one.
    train(config, out / "adapter", tokenizer=ctx.tokenizer)
    write_json(out / "adapter.json", {"source": str(stage.directory / "adapter"), "local": True, "trained": True,
                                      "method": a.method})
    return {"adapter": "trained", "method": a.method}


def run_steering(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    s = ctx.recipe.steering
    config_cls = _require("steering", "interventions.config", "InterventionConfig")
    if s.load is not None:
        if looks_like_path(s.load):  # copied (symlinks refused) before anything reads it
            copy_user_dir(s.load, out / "intervention", "steering.load")
            config_cls.from_pretrained(out / "intervention", model=ctx.model)  # refuses a config that does not fit
        else:
            config = config_cls.from_pretrained(s.load, model=ctx.model)
            config.save_pretrained(out / "intervention")
        write_json(out / "steering.json", {"source": s.load, "computed": False})
        return {"source": s.load}
    ctx.seed()
    model = ctx.aligned_model() if s.compute_on == "cla" else ctx.model
    config, selection = compute_interventions(ctx, model, out)
    config.save_pretrained(out / "intervention", model=model)
    write_json(out / "steering.json", {"computed": True, "selection": selection})
    return {"selection": selection}


def _selection_items(ctx, language: str):
    """Extract-split items of the recipe's transfer and localization tasks (``steering.n_select`` each)."""
    from evaluate.tasks import get_task

    transfer, localization = [], []
    for name in ctx.recipe.evaluate.tasks:
        task = get_task(name, seed=ctx.recipe.seed)
        if task.languages and language not in task.languages:  # validation refuses this pair up front
            raise RecipeError("evaluate.languages", f"task {name} has no items in {language!r} (it serves "
                                                    f"{', '.join(task.languages)})")
        items = task.items(language, split="extract")
        if task.kind == "localization":
            localization += [it for it in items if it.cue == "implicit"][:ctx.recipe.steering.n_select]
        else:
            transfer += items[:ctx.recipe.steering.n_select]
    return transfer, localization


def compute_interventions(ctx: RunContext, model, out: Path):
    """EN-transfer and LOC vectors per evaluated non-English language, at the recipe's layer and
    coefficient, or chosen by an ``interventions.sweep`` on extract items where they are ``auto``."""
    s = ctx.recipe.steering
    vectors = _require("steering", "interventions.vectors")
    save_vectors = _require("steering", "interventions.vector_io", "save_vectors")
    config_cls = _require("steering", "interventions.config", "InterventionConfig")
    top = _model_shape(model)[0] - 1
    languages = [x for x in ctx.recipe.evaluate.languages if x != "en"]
    interventions, selection, sweeps = [], {}, []
    for which in ("en", "loc"):
        vec = getattr(s, which)
        if not vec.enabled:
            continue
        data = [vec.data] if isinstance(vec.data, str) else list(vec.data)  # named data only (the schema)
        for language in languages:
            if which == "en":
                found = vectors.en_transfer_vectors(model, ctx.tokenizer, language, n=vec.n, reduce=vec.reduce,
                                                    method=s.method)
            else:
                found = vectors.loc_vectors(model, ctx.tokenizer, language, tasks=tuple(data), n=vec.n,
                                            reduce=vec.reduce, method=s.method)
            save_vectors(found, out / "vectors")
            layer, coefficient, how, steered = vec.layer, vec.coefficient, "fixed", True
            if layer == "auto" or coefficient == "auto":
                rows, best = _sweep_and_select(ctx, model, found, which, language, top)
                sweeps += rows
                steered = best["steered"]
                how = (f"sweep on extract: largest {RULE_GAIN[which]} with the other score's loss <= {s.tolerance}"
                       if steered else f"sweep on extract: no cell gains {RULE_GAIN[which]} within tolerance "
                                       f"{s.tolerance}: unsteered (coefficient 0)")
                layer = best["layer"] if steered else rows[0]["layer"]
                coefficient = best["coefficient"] if steered else 0.0
            iv = vectors.steering_vector(found, layer, coefficient=coefficient, positions=vec.positions)
            iv.source.update(selected=how, steered=steered)
            interventions.append(iv)
            selection[found.name] = {"layer": layer if steered else None, "coefficient": coefficient, "selected": how,
                                     "steered": steered, "kind": which, "language": language}
    if not interventions:  # validation refuses this; never commit an empty steering stage as complete
        raise RecipeError("evaluate.languages", f"no intervention to compute: EN-transfer and LOC vectors are made "
                                                f"per language other than en, got {ctx.recipe.evaluate.languages}")
    if sweeps:
        write_sweep(sweeps, out)
    return config_cls.for_model(model, interventions, revision=ctx.recipe.model.revision), selection


RULE_GAIN = {"en": "transfer_score", "loc": "localization_score"}


def _sweep_and_select(ctx, model, found, which: str, language: str, top: int) -> tuple[list[dict], dict]:
    """Sweep ``found`` over the recipe's layer x coefficient grid on extract items (``interventions.sweep``,
    the grid in alpha units: multiples of the mean difference, equal to coefficients for mean_difference)
    and pick the cell by the sweep's rule on scores; alpha 0 (unsteered) wins unless a cell gains."""
    from interventions.sweep import cached_sweep, select

    s, vec = ctx.recipe.steering, getattr(ctx.recipe.steering, which)
    layers = [vec.layer] if vec.layer != "auto" else (s.layers or list(range(top + 1)))
    alphas = [vec.coefficient] if vec.coefficient != "auto" else s.coefficients
    transfer, localization = _selection_items(ctx, language)
    rows = cached_sweep(model, ctx.tokenizer, found, layers, transfer, localization, alphas=alphas,
                        positions=vec.positions, batch_size=ctx.recipe.evaluate.batch_size, progress=False)
    rows = [dict(r, language=language, kind=which, n_transfer_items=len(transfer),
                 n_localization_items=len(localization)) for r in rows]
    return rows, select(rows, which, s.tolerance, seed=ctx.recipe.seed, measure="score")


def write_sweep(rows: list[dict], out: Path) -> None:
    """``sweep.json`` + ``sweep.csv`` (``interventions.sweep.save_sweep``) and ``sweep.png`` (``plot_sweep``)."""
    save_sweep = _require("steering", "interventions.sweep", "save_sweep")
    plot_sweep = _require("steering", "evaluate.plots", "plot_sweep")
    save_sweep(rows, out / "sweep.json")
    plot_sweep(rows, out / "sweep.png")


def run_analysis(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    _require("analysis", "evaluate.analysis", "language_separation")
    from .analysis_stage import run_analysis as run

    return run(ctx, stage, out)


def run_experts(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    _require("experts", "interventions.experts", "find_experts")
    from .experts_stage import run_experts as run

    return run(ctx, stage, out)


def run_evaluate(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    _require("evaluate", "evaluate.plane", "evaluate_plane")
    from .evaluation import run_evaluate as run

    return run(ctx, stage, out)


def run_report(ctx: RunContext, stage: StagePlan, out: Path) -> dict:
    _require("report", "evaluate.report", "render_report")
    _require("report", "evaluate.plots", "plot_all")
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
    from huggingface_hub import HfApi

    p = ctx.recipe.publish
    token = os.environ.get(p.token_env) or None
    api = HfApi(token=token)
    folders = publish_folders(ctx)
    card = None
    if "report" in p.push:
        report = ctx.output("report")
        cards = sorted(report.glob("*.md")) if report else []
        if not cards:
            raise RuntimeError("publish: 'report' in publish.push but the report stage wrote no .md file")
        card = cards[0]
    url = api.create_repo(p.repo_id, private=p.private, exist_ok=True)
    commits = []
    for folder, in_repo in folders:
        info = api.upload_folder(folder_path=str(folder), path_in_repo=in_repo or None, repo_id=p.repo_id,
                                 commit_message=p.commit_message, ignore_patterns=["checkpoints/*"])
        commits.append(str(getattr(info, "commit_url", info)))
    if card is not None:
        info = api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=p.repo_id,
                               commit_message=p.commit_message)
        commits.append(str(getattr(info, "commit_url", info)))
    record = {"repo_id": p.repo_id, "url": str(url), "commits": commits}
    write_json(out / "publish.json", record)
    return record


STAGE_FUNCTIONS: dict[str, Callable[[RunContext, StagePlan, Path], dict]] = {
    "model": run_model, "alignment": run_alignment, "steering": run_steering, "analysis": run_analysis,
    "experts": run_experts, "evaluate": run_evaluate, "report": run_report, "publish": run_publish,
}
