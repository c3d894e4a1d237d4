"""Finding experts: language-expert units as ``set`` interventions (Suau et al.; Sundar et al., ACL 2025).

A *unit* is one output coordinate of a projection inside a decoder layer:

- ``mlp_hidden``: the MLP neurons, i.e. the input of the MLP down projection (``act(gate) * up``);
- ``attention_heads``: the concatenated head outputs, i.e. the input of the attention output projection.

A unit's *response* to a sentence is its maximum over the sentence's tokens (padding and special tokens
excluded). A unit's *expertise* for language L is the average precision (AP) of that response at telling
FLORES sentences in L (positives) from sentences in the other languages (negatives). The top-k units by AP
are L's experts; the intervention forces each to its median response over the positives at every position.

Controls (:data:`CONTROLS`), each forced exactly like the experts (every unit to its own median response over
L's sentences, at every position) and matched to them per layer (as many units in each (component, layer) block as
the experts have there, so the same layer histogram and count), never containing a unit the ranking lists (its top
``k_max`` by AP):

- ``random``: units drawn uniformly from the rest of each block, seeded by ``(seed, language, k)``;
- ``variance``: the units of each block with the largest between-language variance of their response (the variance
  of their per-language mean; :meth:`StreamingAP.between_group_variance`): units that carry language identity
  without being L's experts by AP.

Both unit components resolve (:func:`interventions.components.resolve`) to the module whose input holds the
units, exactly where :func:`interventions.steer.steer` forces them. Memory is bounded: one streaming pass keeps,
per language and unit, a fixed-bin histogram of responses (:class:`interventions.expert_ap.StreamingAP`), whose
size does not depend on the number of sentences. Because the negatives for L are the positives of the other
languages, a single pass over all languages ranks the units for every language at once.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from interventions.activations import record, tokenize
from interventions.components import UNIT_COMPONENTS, decoder_layers, decoder_stack, resolve, unwrap
from interventions.expert_ap import StreamingAP, average_precision_exact  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Unit responses, recorded by the project's one recorder
# ----------------------------------------------------------------------------------------------------------

def unit_modules(model, components: Sequence[str]) -> list[tuple[str, int, torch.nn.Module]]:
    """(component, layer, module) for every block of units, resolved exactly as :func:`steer` resolves them."""
    for c in components:
        if c not in UNIT_COMPONENTS:
            raise ValueError(f"component: expected one of {list(UNIT_COMPONENTS)}, got {c!r}")
    base = unwrap(model)
    return [(c, i, base.get_submodule(resolve(model, c, i).module_path))
            for c in components for i in range(len(decoder_layers(model)))]


def iter_unit_responses(model, tokenizer, texts: Sequence[str], components: Sequence[str] = ("mlp_hidden",),
                        batch_size: int = 16, max_length: int = 128, progress: bool = True
                        ) -> Iterable[torch.Tensor]:
    """Yield ``[b, U]`` max-over-tokens responses batch by batch (units ordered component, layer, unit).

    Recorded by :func:`interventions.activations.record` (``reduce="max"`` over :func:`tokenize`'s ``token_mask``):
    padding and special tokens (BOS) never contribute to the max. The forward runs through the decoder stack (no
    LM head) and stops once the last unit block is recorded.
    """
    from tqdm.auto import tqdm

    unit_modules(model, components)  # refuses a component without units
    body = decoder_stack(model)  # the decoder without the LM head
    device = next(model.parameters()).device
    with record(model, range(len(decoder_layers(model))), components, reduce="max") as recorder:
        for start in tqdm(range(0, len(texts), batch_size), desc="unit responses", disable=not progress):
            # token_mask: no padding, no special tokens (unless a text has only those); positions from the mask
            enc = tokenize(tokenizer, texts[start:start + batch_size], device, max_length=max_length)
            mask = enc.pop("token_mask")
            yield torch.cat(recorder.run(body, mask=mask, **enc), dim=1).cpu()


# ----------------------------------------------------------------------------------------------------------
# Rankings and the set-kind intervention
# ----------------------------------------------------------------------------------------------------------

@dataclass
class ExpertRanking:
    """Units of one language ranked by AP, with median positive responses for the top ``k_max``."""

    language: str
    blocks: list[tuple[str, int, int]]  # (component, layer, width) in unit order
    average_precision: torch.Tensor  # float64 [U]
    order: torch.Tensor  # long [k_max], best first
    medians: torch.Tensor  # float32 [k_max], aligned with order
    source: dict = field(default_factory=dict)
    unit_medians: torch.Tensor | None = None  # float32 [U]: median response over L's sentences of every unit
    language_variance: torch.Tensor | None = None  # float64 [U]: variance of the per-language mean responses

    @property
    def components(self) -> list[str]:
        return list(dict.fromkeys(c for c, _, _ in self.blocks))

    def _block_slices(self) -> list[slice]:
        offsets = np.cumsum([0] + [w for _, _, w in self.blocks])
        return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]

    def _require(self, what: str) -> torch.Tensor:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"ranking of {self.language}: no {what} (saved before controls existed); find the "
                             f"experts again")
        return value

    def restrict(self, component: str) -> "ExpertRanking":
        """The ranking of ``component``'s units only (its own top ``k_max`` by AP), from the same pass."""
        if component not in self.components:
            raise ValueError(f"component: expected one of {self.components}, got {component!r}")
        if self.components == [component]:
            return self
        unit_medians = self._require("unit_medians")
        idx = torch.cat([torch.arange(sl.start, sl.stop) for (c, _, _), sl in zip(self.blocks, self._block_slices())
                         if c == component])
        ap = self.average_precision[idx]
        order = torch.argsort(ap, descending=True, stable=True)[:len(self.order)]
        variance = None if self.language_variance is None else self.language_variance[idx]
        return ExpertRanking(self.language, [b for b in self.blocks if b[0] == component], ap, order,
                             unit_medians[idx][order], {**self.source, "components": [component]},
                             unit_medians[idx], variance)

    def unit_set(self, k: int, control: str | None = None, seed: int = 0) -> torch.Tensor:
        """Flat indices of the top ``k`` experts (``control=None``) or of their matched ``control``, sorted."""
        if not 0 <= k <= len(self.order):
            raise ValueError(f"k: expected 0..{len(self.order)} (experts ranked with k_max), got {k}")
        experts = self.order[:k]
        if control is None:
            return experts.sort().values
        if control not in CONTROLS:
            raise ValueError(f"control: expected one of {list(CONTROLS)}, got {control!r}")
        score = self._require("language_variance") if control == "variance" else None
        ranked = torch.zeros(self.average_precision.numel(), dtype=torch.bool)
        ranked[self.order] = True  # every unit the ranking lists is excluded from the controls
        rng = np.random.default_rng([seed, k, zlib.crc32(self.language.encode())])
        chosen = []
        for (comp, layer, _), sl in zip(self.blocks, self._block_slices()):
            need = int(((experts >= sl.start) & (experts < sl.stop)).sum())
            if not need:
                continue
            candidates = torch.arange(sl.start, sl.stop)[~ranked[sl]]
            if len(candidates) < need:
                raise ValueError(f"control {control!r}: {comp} layer {layer} has {len(candidates)} units outside the "
                                 f"ranked experts, {need} needed to match the top-{k}")
            if control == "random":
                chosen.append(candidates[torch.from_numpy(rng.choice(len(candidates), need, replace=False))])
            else:
                top = torch.argsort(score[candidates], descending=True, stable=True)[:need]
                chosen.append(candidates[top])
        return torch.cat(chosen or [torch.empty(0, dtype=torch.long)]).sort().values

    def locate(self, flat_units: torch.Tensor) -> list[tuple[str, int, int]]:
        offsets = np.cumsum([0] + [w for _, _, w in self.blocks])
        out = []
        for u in flat_units.tolist():
            b = int(np.searchsorted(offsets, u, side="right") - 1)
            out.append((self.blocks[b][0], self.blocks[b][1], u - int(offsets[b])))
        return out

    def top(self, k: int, control: str | None = None, seed: int = 0
            ) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
        """The top ``k`` experts (or their matched ``control``) grouped as (component, layer, units, values), sorted
        by component and layer; each unit's value is its median response over L's sentences."""
        units = self.unit_set(k, control, seed)
        if control is None:
            values = self.medians[:k][torch.argsort(self.order[:k])]  # aligned with the sorted units
        else:
            values = self._require("unit_medians")[units]
        groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for (comp, layer, unit), value in zip(self.locate(units), values.tolist()):
            groups.setdefault((comp, layer), []).append((unit, value))
        out = []
        for (comp, layer), pairs in sorted(groups.items()):
            pairs.sort()
            out.append((comp, layer, torch.tensor([p[0] for p in pairs], dtype=torch.long),
                        torch.tensor([p[1] for p in pairs], dtype=torch.float32)))
        return out

    def interventions(self, k: int, positions: str = "all", control: str | None = None, seed: int = 0) -> list:
        """The top ``k`` experts (or their matched ``control``) as ``SetIntervention`` s, one per (component,
        layer); controls have ``role="control"``."""
        from interventions.config import SetIntervention

        ap = self.average_precision
        source = {**self.source, "method": "finding_experts", "k": k,
                  "min_ap": float(ap[self.order[k - 1]]) if k else None}
        name, role = f"experts_{self.language}", "experts"
        if control is not None:
            name, role = f"{control}_control_{self.language}", "control"
            source = {**source, "role": "control", "control": control, "definition": CONTROLS[control],
                      "matched_to": f"top-{k} experts of {self.language}", "excluded_top": len(self.order),
                      **({"seed": seed} if control == "random" else {})}
        return [SetIntervention(name=f"{name}.{comp}.{layer}", component=comp, layer=layer, units=units,
                                values=values, positions=positions, source=source, role=role,
                                language=self.language)
                for comp, layer, units, values in self.top(k, control, seed)]

    def config(self, model, k: int, positions: str = "all", control: str | None = None, seed: int = 0):
        from interventions.config import InterventionConfig

        return InterventionConfig.for_model(model, self.interventions(k, positions, control, seed))

    def save(self, directory: str | Path) -> None:
        """Write ``expert_ranking.safetensors`` + ``expert_ranking.json`` (AP of every unit, medians of the top)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"average_precision": self.average_precision, "order": self.order, "medians": self.medians,
                   "unit_medians": self.unit_medians, "language_variance": self.language_variance}
        save_file({name: t.contiguous() for name, t in tensors.items() if t is not None},
                  str(d / "expert_ranking.safetensors"))
        (d / "expert_ranking.json").write_text(json.dumps(
            {"language": self.language, "blocks": [list(b) for b in self.blocks], "source": self.source},
            indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> "ExpertRanking":
        from safetensors.torch import load_file

        d = Path(directory)
        for name in ("expert_ranking.json", "expert_ranking.safetensors"):
            if not (d / name).is_file():
                raise ValueError(f"{d / name}: missing (expected a directory written by ExpertRanking.save)")
        meta = json.loads((d / "expert_ranking.json").read_text())
        t = load_file(str(d / "expert_ranking.safetensors"))
        return cls(meta["language"], [tuple(b) for b in meta["blocks"]], t["average_precision"], t["order"],
                   t["medians"], meta.get("source", {}), t.get("unit_medians"), t.get("language_variance"))


CONTROLS = {
    "random": "units drawn uniformly (seeded by seed, language, k) from the units of each (component, layer) block "
              "outside the ranked experts, as many per block as the top-k experts have there; each forced to its "
              "median response over L's sentences",
    "variance": "the units of each (component, layer) block with the largest between-language variance of their "
                "response, outside the ranked experts, as many per block as the top-k experts have there; each "
                "forced to its median response over L's sentences",
}
"""The controls of a top-k expert set and their definitions (recorded in each control intervention's source)."""


def interleave(texts: Mapping[str, Sequence[str]]) -> tuple[list[str], list[int]]:
    """The texts of every language interleaved (so every batch mixes languages), with each text's group: the
    index of its language in ``texts``."""
    per = list(texts.values())
    texts_out, groups = [], []
    for i in range(max((len(t) for t in per), default=0)):
        for g, sents in enumerate(per):
            if i < len(sents):
                texts_out.append(sents[i])
                groups.append(g)
    return texts_out, groups


def find_experts(model, tokenizer, texts: Mapping[str, Sequence[str]], *, targets: Sequence[str] | None = None,
                 k_max: int = 1000, components: Sequence[str] = ("mlp_hidden",), bins: int = 512,
                 batch_size: int = 16, progress: bool = True, source: Mapping | None = None
                 ) -> dict[str, ExpertRanking]:
    """Rank the units of ``model`` as experts of each target language against the other languages.

    ``texts``: ``{language: sentences}`` (e.g. parallel FLORES sentences, loaded by
    :func:`evaluate.contrasts.flores_experts`); one streaming pass over all of them. Returns a ranking per
    target (default: every language but English) holding the AP of every unit and the top ``k_max`` medians;
    ``source`` (what the texts are) is added to each ranking's provenance.
    """
    languages = list(texts)
    targets = [t for t in languages if t != "en"] if targets is None else list(targets)
    for t in targets:
        if t not in languages:
            raise ValueError(f"targets: {t!r} is not among languages {languages}")
    empty = [lang for lang in languages if not texts[lang]]
    if empty:
        raise ValueError(f"texts: no sentences for {empty}")
    counts = {lang: len(texts[lang]) for lang in languages}
    texts, groups = interleave(texts)
    # longest first: less padding per batch, and the first batch (which fixes the bin ranges) sees long sentences
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    texts, groups = [texts[i] for i in order], [groups[i] for i in order]
    acc = StreamingAP(len(languages), bins=bins)
    batches = iter_unit_responses(model, tokenizer, texts, components, batch_size, progress=progress)
    for start, responses in zip(range(0, len(texts), batch_size), batches):
        acc.update(responses, groups[start:start + batch_size])
    blocks = [(c, i, w) for (c, i, _), w in zip(unit_modules(model, components), unit_widths(model, components))]
    if sum(w for _, _, w in blocks) != acc.n_units:
        raise ValueError("internal: unit blocks do not add up to the accumulator width")
    from interventions.models import model_id

    out = {}
    variance = acc.between_group_variance()
    every_unit = torch.arange(acc.n_units)
    for t in targets:
        g = languages.index(t)
        ap = acc.average_precision(g)
        order = torch.argsort(ap, descending=True, stable=True)[:k_max]
        unit_medians = acc.median(g, every_unit)
        provenance = {"method": "finding_experts", "language": t, "negatives": [x for x in languages if x != t],
                      "n_per_language": min(counts.values()), "response": "max_over_tokens",
                      "value": "median_over_positives", "components": list(components), "bins": bins,
                      "model": model_id(model), **(source or {})}
        out[t] = ExpertRanking(t, blocks, ap, order, unit_medians[order], provenance, unit_medians, variance)
    return out


def unit_widths(model, components: Sequence[str]) -> list[int]:
    """Number of units of every (component, layer) block: the input width of its projection, as
    :func:`interventions.components.resolve` (what steering hooks) gives it."""
    unit_modules(model, components)  # the same component check
    return [resolve(model, c, i).width for c in components for i in range(len(decoder_layers(model)))]
