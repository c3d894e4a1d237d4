"""The run plan: which stages run, what each one does, and its content hash.

Each stage's hash is the sha256 of the canonical JSON of its own config plus the hashes of the upstream
stages it reads (:func:`stage_configs` says which); it also covers the library version and one digest of
the bundled data (``evaluate/data``), so an upgrade never reuses a stage computed by other code or data.
Where the stages live, how they are committed and the run's lock: :mod:`recipes.run_dir`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from interventions.provenance import library_version

from .crossfit_stage import uses_crossfit
from .run_dir import HASH_VERSION, StagePlan, bundled_data_digest, content_hash, is_complete
from .schema import STAGES, Recipe


@dataclass
class Plan:
    recipe: Recipe
    run_dir: Path
    stages: dict[str, StagePlan] = field(default_factory=dict)
    forced: set[str] = field(default_factory=set)
    """Stages to redo even if complete (``--force``)."""

    def __iter__(self):
        return iter(self.stages.values())

    def describe(self) -> str:
        lines = [f"recipe {self.recipe.name} (seed {self.recipe.seed}) -> {self.run_dir}"]
        for st in self:
            where = st.directory.name if (st.active and st.directory) else "-"
            lines.append(f"  {st.name:<10} {st.hash[:12]:<12} {st.status:<16} {where:<24} {st.action}")
        return "\n".join(lines)


def _uses_cla(recipe: Recipe) -> bool:
    a = recipe.alignment
    return a.method != "none" or a.adapter is not None


def _steering_active(recipe: Recipe) -> bool:
    s = recipe.steering
    return s.load is not None or s.en.enabled or s.loc.enabled


def _describe_actions(recipe: Recipe) -> dict[str, str]:
    m, a, s, e, r, p = (recipe.model, recipe.alignment, recipe.steering, recipe.evaluate,
                        recipe.report, recipe.publish)
    an = recipe.analysis
    if a.adapter:
        align = f"load adapter {a.adapter}"
    elif a.method != "none":
        langs = ",".join(a.languages or [x for x in e.languages if x != "en"])
        def knob(v):
            return "method default" if v is None else v

        align = (f"train {a.method} LoRA r={knob(a.lora_r)} ({knob(a.max_steps)} steps, lr {knob(a.learning_rate)}, "
                 f"{langs})")
    else:
        align = "no adapter"
    if s.load:
        steer = f"load intervention directory {s.load}"
    else:
        parts = []
        for which in ("en", "loc"):
            v = getattr(s, which)
            if v.enabled:
                data = v.data if isinstance(v.data, str) else "+".join(v.data)
                parts.append(f"{which.upper()} {s.method} on {data} (n={v.n}) layer {v.layer} alpha {v.alpha}")
        if uses_crossfit(recipe):
            steer = ("; ".join(parts) + f" at {s.component}: {s.selection.folds}-fold cross-validated selection "
                     f"on every item (layers {s.layers or 'all'}, alphas {s.alphas}), out-of-fold plane with "
                     "random-direction controls, for each evaluated model")
        else:
            steer = "; ".join(parts) + f" at {s.component} on the {s.compute_on} model"
    return {
        "model": f"load {m.name} ({m.dtype}{', ' + m.device if m.device else ''})",
        "alignment": align,
        "steering": steer,
        "evaluate": (f"{len(e.variants)} variants x {len(e.languages)} languages x {len(e.tasks)} tasks "
                     f"({', '.join(e.variants)} | {', '.join(e.languages)} | {', '.join(e.tasks)}), "
                     + (f"out of fold over every split ({e.n or 'all'} transfer / {e.n_localization or 'all'} "
                        "localization groups per task and language), pre-registered tests"
                        if uses_crossfit(recipe) else f"split {e.split}, n<={e.n}")),
        "analysis": (f"FLORES devtest representations by layer (n={an.n}; {', '.join(['en', *e.languages])}): "
                     "PCA grid, language separation, retrieval; cos(v_EN, v_LOC) per layer" if an.enabled
                     else "disabled"),
        "experts": _describe_experts(recipe),
        "report": f"write {', '.join(r.formats)}{' + plots' if r.plots else ''}"
                  + (" + pre-registered tests" if uses_crossfit(recipe) else " + claims as measured"),
        "publish": (f"push {', '.join(p.push)} to {p.repo_id} ({'private' if p.private else 'public'})"
                    if p.enabled else "disabled"),
    }


def experts_settings(recipe: Recipe) -> dict:
    """The experts section with its defaults resolved (targets, contrast pool, ks, apply_to as a list)."""
    x = dataclasses.asdict(recipe.experts)
    targets = x["languages"] or [lang for lang in recipe.evaluate.languages if lang != "en"]
    contrast = list(dict.fromkeys(["en"] + list(x["contrast"] or targets) + targets))
    apply_to = [x["apply_to"]] if isinstance(x["apply_to"], str) else list(dict.fromkeys(x["apply_to"]))
    return {**x, "languages": targets, "contrast": contrast, "ks": sorted(set(x["ks"] or [x["k"]])),
            "apply_to": apply_to, "seed": recipe.seed}


def _describe_experts(recipe: Recipe) -> str:
    if not recipe.experts.enabled:
        return "disabled"
    x = experts_settings(recipe)
    retrieval = (f"; FLORES devtest retrieval n={x['retrieval_n']} at k={x['ks']} ({'+'.join(x['apply_to'])})"
                 if x["retrieval_n"] else "")
    return (f"find {'+'.join(x['components'])} experts of {', '.join(x['languages'])} vs {', '.join(x['contrast'])} "
            f"(n={x['n']} FLORES dev); save top-{x['k']} as set interventions{retrieval}")


def stage_configs(recipe: Recipe) -> dict[str, tuple[dict, list[str], bool]]:
    """Per stage: (its own config, the upstream stages whose hashes it includes, active)."""
    d = dataclasses.asdict(recipe)
    e = recipe.evaluate
    cla_eval = any(v.startswith("cla") for v in e.variants)
    steer_eval = any("+" in v for v in e.variants)
    align_cfg = dict(d["alignment"])
    if align_cfg["seed"] is None:
        align_cfg["seed"] = recipe.seed
    if align_cfg["languages"] is None and align_cfg["method"] != "none":
        align_cfg["languages"] = [x for x in e.languages if x != "en"]
    steer_cfg = {**d["steering"], "languages": list(e.languages), "seed": recipe.seed}
    crossfit = uses_crossfit(recipe)
    if crossfit:  # the cross-fitted stage scores the evaluation items of every evaluated model
        steer_cfg["evaluate"] = {k: d["evaluate"][k] for k in ("tasks", "variants", "n", "n_localization",
                                                                 "batch_size")}
    publish_up = ["steering"] + (["alignment"] if "adapter" in recipe.publish.push else []) + (
        ["report"] if "report" in recipe.publish.push else [])
    return {
        "model": (d["model"], [], True),
        "alignment": (align_cfg, ["model"], _uses_cla(recipe)),
        "steering": (steer_cfg, ["model"] + (["alignment"] if recipe.steering.compute_on == "cla"
                                             or (crossfit and cla_eval) else []),
                     _steering_active(recipe) and (steer_eval or recipe.publish.enabled or recipe.analysis.enabled)),
        "analysis": ({**d["analysis"], "languages": list(e.languages), "seed": recipe.seed}, ["model", "steering"],
                     recipe.analysis.enabled),
        "experts": (experts_settings(recipe), ["model"], recipe.experts.enabled),
        "evaluate": ({**d["evaluate"], "seed": recipe.seed},
                     ["model"] + (["alignment"] if cla_eval else []) + (["steering"] if steer_eval else []), True),
        "report": (d["report"], ["evaluate", "analysis"], recipe.report.enabled),
        "publish": ({k: v for k, v in d["publish"].items() if k != "token_env"}, publish_up,
                    recipe.publish.enabled),
    }


def make_plan(recipe: Recipe, run_dir: Path) -> Plan:
    """Hash every stage (own config + upstream hashes) and check which are already complete."""
    plan = Plan(recipe, Path(run_dir))
    actions = _describe_actions(recipe)
    code = {"hash_version": HASH_VERSION, "library": library_version(), "data": bundled_data_digest()}
    for name, (cfg, upstream, active) in stage_configs(recipe).items():
        upstream = [u for u in upstream if plan.stages[u].active]
        digest = content_hash({**code, "stage": name, "config": cfg,
                               "upstream": {u: plan.stages[u].hash for u in upstream}})
        st = StagePlan(name, cfg, upstream, digest, active, actions[name])
        st.directory = plan.run_dir / f"{name}-{digest[:12]}"
        st.complete = active and is_complete(st.directory, digest)
        plan.stages[name] = st
    assert tuple(plan.stages) == STAGES
    return plan


