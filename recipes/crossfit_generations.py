"""The generations of a cross-fitted run's report (:mod:`evaluate.generations`), made in its evaluate stage.

Variants, per language: ``base`` (the model alone; the adapter disabled when one is loaded), ``cla`` (when the
recipe has an adapter), and on the steering stage's primary run (``cla`` when steered, else ``base``) the
vectors of ``intervention/`` that serve that language, by their typed ``role``/``language`` fields
(:func:`recipes.evaluation.intervention_role`): ``+en``, ``+loc``, ``+surgical`` (both) and ``+random``: the
norm-matched random control (:func:`interventions.controls.control_intervention`, seed = the recipe's seed)
of every vector ``+surgical`` applies. ``intervention/`` holds each vector at its modal out-of-fold choice and
leaves out the ones whose choice was "unsteered"; a variant one of whose vectors is left out is not
generated, and the report says so.
"""

from __future__ import annotations

from pathlib import Path

from .evaluation import RecipeVariant, intervention_role

ROLES = {"en": ("en",), "loc": ("loc",), "surgical": ("en", "loc")}


def generation_variants(ctx, language: str, config, primary: str) -> list:
    """The variants whose continuations are shown for ``language`` (:class:`evaluate.generations.Skipped` for
    the ones without their vectors)."""
    from evaluate.generations import Skipped
    from interventions.config import AdditiveIntervention, InterventionConfig
    from interventions.controls import control_intervention

    peft = ctx.aligned_model() if ctx.adapter_source() is not None else None
    variants = [RecipeVariant("base", ctx.model, None, adapter_off=peft, unit=language)]
    if peft is not None:
        variants.append(RecipeVariant("cla", peft, None, unit=language))
    model, off = (peft, None) if primary == "cla" else (ctx.model, peft)
    by_role: dict[str, list] = {}
    for iv in config.interventions:
        role, lang = intervention_role(iv)
        if role in ("en", "loc") and lang in (None, language):
            by_role.setdefault(role, []).append(iv)

    def variant(name: str, roles: tuple[str, ...], control: bool = False):
        missing = [r.upper() for r in roles if not by_role.get(r)]
        if missing:
            return Skipped(name, f"no {' or '.join(missing)} vector for {language}: its modal out-of-fold choice "
                                 "was unsteered")
        ivs = [iv for r in roles for iv in by_role[r]]
        if control:
            odd = [iv.name for iv in ivs if not isinstance(iv, AdditiveIntervention)]
            if odd:
                return Skipped(name, f"no random control of the non-additive {', '.join(odd)}")
            ivs = [control_intervention(iv, seed=ctx.recipe.seed) for iv in ivs]
        return RecipeVariant(name, model, InterventionConfig(ivs, dict(config.base_model)), adapter_off=off,
                             unit=language)

    variants += [variant(f"{primary}+{addition}", roles) for addition, roles in ROLES.items()]
    variants.append(variant(f"{primary}+random", ROLES["surgical"], control=True))
    return variants


def crossfit_generations(ctx, steering: Path, primary: str) -> tuple[list[dict], dict]:
    """(rows, settings): greedy continuations of the sampled prompts of every evaluated language but English."""
    from evaluate.generations import generate_side_by_side, sample_prompts, settings
    from interventions.config import InterventionConfig

    e, seed = ctx.recipe.evaluate, ctx.recipe.seed
    config = InterventionConfig.from_pretrained(steering / "intervention")
    how = settings(list(e.tasks), seed)
    languages = [x for x in e.languages if x != "en"]
    prompts = sample_prompts(how["tasks"], languages, how["n_local"], how["n_transfer"], seed=seed)
    rows = []
    for language in languages:
        mine = [p for p in prompts if p["language"] == language]
        if mine:
            rows += generate_side_by_side(generation_variants(ctx, language, config, primary), ctx.tokenizer, mine,
                                          how["max_new_tokens"])
    return rows, {**how, "variants": "base, cla (with an adapter), and on the primary run +en, +loc, +surgical, "
                                     "+random (norm-matched random control of +surgical's vectors)"}


__all__ = ["crossfit_generations", "generation_variants"]
