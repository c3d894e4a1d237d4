"""Finding experts: language-expert units as ``set`` interventions (Suau et al.; Sundar et al., ACL 2025).

A *unit* is one output coordinate of a projection inside a decoder layer:

- ``mlp_hidden``: the MLP neurons, i.e. the input of the MLP down projection (``act(gate) * up``);
- ``attention_heads``: the concatenated head outputs, i.e. the input of the attention output projection.

A unit's *response* to a sentence is its maximum over the sentence's tokens (padding and special tokens
excluded). A unit's *expertise* for language L is the average precision (AP) of that response at telling
FLORES sentences in L (positives) from sentences in the other languages (negatives). The top-k units by AP
are L's experts; the intervention forces each to its median response over the positives at every position.

Both unit components resolve (:func:`interventions.components.resolve`) to the module whose input holds the
units, exactly where :func:`interventions.steer.steer` forces them. Memory is bounded: one streaming pass keeps,
per language and unit, a fixed-bin histogram of responses (:class:`interventions.expert_ap.StreamingAP`), whose
size does not depend on the number of sentences. Because the negatives for L are the positives of the other languages, a single pass
over all languages ranks the units for every language at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from interventions.components import UNIT_COMPONENTS, decoder_layers, decoder_stack, resolve, unwrap
from interventions.expert_ap import StreamingAP, average_precision_exact  # noqa: F401  (re-exported)
from interventions.vectors import tokenize

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Unit responses from plain forward hooks
# ----------------------------------------------------------------------------------------------------------

def unit_modules(model, components: Sequence[str]) -> list[tuple[str, int, torch.nn.Module]]:
    """(component, layer, module) for every block of units, resolved exactly as :func:`steer` resolves them."""
    for c in components:
        if c not in UNIT_COMPONENTS:
            raise ValueError(f"component: expected one of {list(UNIT_COMPONENTS)}, got {c!r}")
    base = unwrap(model)
    return [(c, i, base.get_submodule(resolve(model, c, i).module_path))
            for c in components for i in range(len(decoder_layers(model)))]


def _module_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def iter_unit_responses(model, tokenizer, texts: Sequence[str], components: Sequence[str] = ("mlp_hidden",),
                        batch_size: int = 16, max_length: int = 128, progress: bool = True
                        ) -> Iterable[torch.Tensor]:
    """Yield ``[b, U]`` max-over-tokens responses batch by batch (units ordered component, layer, unit).

    Padding and special tokens (BOS) never contribute to the max. The forward pass stops after the last
    decoder layer (no LM head), through the base model when there is one.
    """
    from tqdm.auto import tqdm

    mods = unit_modules(model, components)
    store: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def make_hook(j):
        def hook(module, args, kwargs):
            h = _module_input(args, kwargs)  # [b, t, width]
            mask = state["mask"]
            store[j] = h.float().masked_fill(~mask[..., None], float("-inf")).amax(1)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(j), with_kwargs=True) for j, (_, _, m) in enumerate(mods)]
    body = decoder_stack(model)  # the decoder without the LM head
    device = next(model.parameters()).device
    try:
        bar = tqdm(range(0, len(texts), batch_size), desc="unit responses", disable=not progress)
        for start in bar:
            # token_mask: no padding, no special tokens (unless a text has only those); positions from the mask
            enc = tokenize(tokenizer, texts[start:start + batch_size], device, max_length=max_length)
            state["mask"] = enc.pop("token_mask")
            store.clear()
            with torch.no_grad():
                body(**enc)
            yield torch.cat([store[j] for j in range(len(mods))], dim=1).cpu()
    finally:
        for h in handles:
            h.remove()


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

    def locate(self, flat_units: torch.Tensor) -> list[tuple[str, int, int]]:
        offsets = np.cumsum([0] + [w for _, _, w in self.blocks])
        out = []
        for u in flat_units.tolist():
            b = int(np.searchsorted(offsets, u, side="right") - 1)
            out.append((self.blocks[b][0], self.blocks[b][1], u - int(offsets[b])))
        return out

    def top(self, k: int) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
        """The top ``k`` experts grouped as (component, layer, units, values), sorted by component and layer."""
        if not 0 <= k <= len(self.order):
            raise ValueError(f"k: expected 0..{len(self.order)} (experts ranked with k_max), got {k}")
        groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for (comp, layer, unit), value in zip(self.locate(self.order[:k]), self.medians[:k].tolist()):
            groups.setdefault((comp, layer), []).append((unit, value))
        out = []
        for (comp, layer), pairs in sorted(groups.items()):
            pairs.sort()
            out.append((comp, layer, torch.tensor([p[0] for p in pairs], dtype=torch.long),
                        torch.tensor([p[1] for p in pairs], dtype=torch.float32)))
        return out

    def interventions(self, k: int, positions: str = "all") -> list:
        """The top ``k`` experts as ``SetIntervention`` s, one per (component, layer)."""
        from interventions.config import SetIntervention

        ap = self.average_precision
        return [SetIntervention(name=f"experts_{self.language}.{comp}.{layer}", component=comp, layer=layer,
                                units=units, values=values, positions=positions,
                                source={**self.source, "method": "finding_experts", "k": k,
                                        "min_ap": float(ap[self.order[k - 1]]) if k else None})
                for comp, layer, units, values in self.top(k)]

    def config(self, model, k: int, positions: str = "all"):
        from interventions.config import InterventionConfig

        return InterventionConfig.for_model(model, self.interventions(k, positions))

    def save(self, directory: str | Path) -> None:
        """Write ``expert_ranking.safetensors`` + ``expert_ranking.json`` (AP of every unit, medians of the top)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"average_precision": self.average_precision.contiguous(), "order": self.order.contiguous(),
                   "medians": self.medians.contiguous()}, str(d / "expert_ranking.safetensors"))
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
                   t["medians"], meta.get("source", {}))


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
    for t in targets:
        g = languages.index(t)
        ap = acc.average_precision(g)
        order = torch.argsort(ap, descending=True, stable=True)[:k_max]
        provenance = {"method": "finding_experts", "language": t, "negatives": [x for x in languages if x != t],
                      "n_per_language": min(counts.values()), "response": "max_over_tokens",
                      "value": "median_over_positives", "components": list(components), "bins": bins,
                      "model": model_id(model), **(source or {})}
        out[t] = ExpertRanking(t, blocks, ap, order, acc.median(g, order), provenance)
    return out


def unit_widths(model, components: Sequence[str]) -> list[int]:
    """Number of units of every (component, layer) block: the input width of its projection."""
    widths = []
    for _, _, m in unit_modules(model, components):
        base = getattr(m, "base_layer", m)  # a PEFT LoRA wrapper keeps the projection as base_layer
        w = getattr(base, "in_features", None)
        widths.append(int(w) if w is not None else int(base.weight.shape[0]))  # Conv1D (gpt2): weight [in, out]
    return widths
