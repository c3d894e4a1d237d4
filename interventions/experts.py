"""Finding experts: language-expert units as ``set`` interventions (Suau et al.; Sundar et al., ACL 2025).

A *unit* is one output coordinate of a projection inside a decoder layer:

- ``mlp_hidden``: the MLP neurons, i.e. the input of the MLP down projection (``act(gate) * up``);
- ``attention_heads``: the concatenated head outputs, i.e. the input of the attention output projection.

A unit's *response* to a sentence is its maximum over the sentence's tokens (padding and special tokens
excluded). A unit's *expertise* for language L is the average precision (AP) of that response at telling
FLORES sentences in L (positives) from sentences in the other languages (negatives). The top-k units by AP
are L's experts; the intervention forces each to its median response over the positives at every position.

Memory is bounded: one streaming pass keeps, per language and unit, a fixed-bin histogram of responses
(:class:`StreamingAP`), whose size does not depend on the number of sentences. AP and medians are read off
the cumulative counts. Because the negatives for L are the positives of the other languages, a single pass
over all languages ranks the units for every language at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from interventions.components import decoder_layers, decoder_stack, resolve, unwrap
from interventions.vectors import tokenize

logger = logging.getLogger(__name__)

UNIT_COMPONENTS = {
    "mlp_hidden": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "feed_forward.w2"),
    "attention_heads": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.dense",
                        "self_attn.out_proj"),
}
"""Unit components -> candidate module paths (inside a decoder layer) whose *input* holds the units."""

DEFAULT_LANGUAGES = ("en", "ar", "es", "id", "ko", "zh")


# ----------------------------------------------------------------------------------------------------------
# Average precision: exact reference and bounded-memory streaming histogram
# ----------------------------------------------------------------------------------------------------------

def average_precision_exact(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact AP (same definition as sklearn's ``average_precision_score``: tied scores form one threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        raise ValueError("labels: expected at least one positive")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _histogram_ap(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AP from per-bin counts ``[U, bins]`` (highest bin first), positives and negatives randomly mixed in a bin.

    Inside a bin holding p positives and q negatives after a = TP, b = TP + FP items above it, the j-th positive
    has precision ~ (a + j) / (b + j (p + q) / p); the sum over j is the integral of that curve over
    [1/2, p + 1/2] (closed form). This removes most of the tie bias of treating a bin as one threshold.
    """
    a = pos.cumsum(-1) - pos
    b = a + neg.cumsum(-1) - neg
    c = (pos + neg) / pos.clamp_min(1)
    safe_c = c.clamp_min(1)

    def antiderivative(x):
        return x / safe_c + (a - b / safe_c) / safe_c * torch.log(b + safe_c * x)

    area = antiderivative(pos + 0.5) - antiderivative(torch.full_like(pos, 0.5))
    area = torch.where(pos > 0, area, torch.zeros_like(area))
    return area.sum(-1) / pos.sum(-1).clamp_min(1)


class StreamingAP:
    """Per-group, per-unit histograms of responses: AP and medians in memory independent of n.

    The bin range of each unit is fixed from the first ``calibration`` responses (buffered, a constant
    ``calibration x n_units`` floats): their min..max widened by ``margin`` of the span on each side. Values beyond
    it land in two overflow bins, whose medians are interpolated towards the running per-unit minimum / maximum.
    Size: ``n_groups * n_units * (bins + 2)`` int32 counts plus O(n_groups * n_units), whatever the number of
    sentences.
    """

    def __init__(self, n_groups: int, bins: int = 512, margin: float = 0.25, calibration: int = 64):
        if n_groups < 2:
            raise ValueError(f"n_groups: expected >= 2 (positives and negatives), got {n_groups}")
        if bins < 2:
            raise ValueError(f"bins: expected >= 2, got {bins}")
        self.n_groups, self.bins, self.margin, self.calibration = n_groups, bins, margin, calibration
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.counts: torch.Tensor | None = None  # [G, U, bins + 2] int32
        self.low = self.width = None  # [U]
        self.minimum = self.maximum = None  # [G, U]

    @property
    def n_units(self) -> int:
        self.flush()
        return 0 if self.counts is None else self.counts.shape[1]

    @property
    def nbytes(self) -> int:
        self.flush()
        tensors = [self.counts, self.low, self.width, self.minimum, self.maximum]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def group_sizes(self) -> torch.Tensor:
        self.flush()
        return self.counts[:, 0, :].sum(-1)

    def _init(self, responses: torch.Tensor) -> None:
        u = responses.shape[1]
        lo, hi = responses.min(0).values, responses.max(0).values
        span = (hi - lo).clamp_min(1e-6)
        self.low = lo - self.margin * span
        self.width = span * (1 + 2 * self.margin) / self.bins
        self.counts = torch.zeros(self.n_groups, u, self.bins + 2, dtype=torch.int32)
        self.minimum = torch.full((self.n_groups, u), float("inf"))
        self.maximum = torch.full((self.n_groups, u), float("-inf"))

    def update(self, responses: torch.Tensor, groups: torch.Tensor | Sequence[int]) -> None:
        """Add ``responses[b, U]`` of ``b`` sentences whose group (language) indices are ``groups[b]``."""
        responses = responses.detach().float().cpu()
        groups = torch.as_tensor(groups, dtype=torch.long).cpu()
        if responses.ndim != 2 or groups.shape != (responses.shape[0],):
            raise ValueError(f"responses/groups: expected [b, U] and [b], got {tuple(responses.shape)} "
                             f"and {tuple(groups.shape)}")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.n_groups):
            raise ValueError(f"groups: expected indices in [0, {self.n_groups}), got {groups.tolist()}")
        if self.counts is None:
            if self._pending and responses.shape[1] != self._pending[0][0].shape[1]:
                raise ValueError(f"responses: expected {self._pending[0][0].shape[1]} units, got {responses.shape[1]}")
            self._pending.append((responses, groups))
            if sum(len(g) for _, g in self._pending) >= self.calibration:
                self.flush()
            return
        if responses.shape[1] != self.n_units:
            raise ValueError(f"responses: expected {self.n_units} units, got {responses.shape[1]}")
        self._add(responses, groups)

    def flush(self) -> None:
        """Fix the bin ranges from the buffered calibration responses and count them (called when needed)."""
        if self.counts is not None or not self._pending:
            return
        responses = torch.cat([r for r, _ in self._pending])
        groups = torch.cat([g for _, g in self._pending])
        self._pending = []
        self._init(responses)
        self._add(responses, groups)

    def _add(self, responses: torch.Tensor, groups: torch.Tensor) -> None:
        u, nb = self.n_units, self.bins + 2
        idx = torch.floor((responses - self.low) / self.width).long() + 1
        idx = idx.clamp_(0, nb - 1)
        flat = (groups[:, None] * u + torch.arange(u)[None, :]) * nb + idx
        self.counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.int32))
        for g in groups.unique().tolist():
            r = responses[groups == g]
            self.minimum[g] = torch.minimum(self.minimum[g], r.min(0).values)
            self.maximum[g] = torch.maximum(self.maximum[g], r.max(0).values)

    def average_precision(self, positive: int | Sequence[int], chunk: int = 8192) -> torch.Tensor:
        """AP of every unit at ranking the ``positive`` group(s) above the rest -> float64 [U]."""
        self.flush()
        if self.counts is None:
            raise ValueError("StreamingAP: no responses were added")
        pos_groups = [positive] if isinstance(positive, int) else list(positive)
        out = torch.empty(self.n_units, dtype=torch.float64)
        for start in range(0, self.n_units, chunk):
            c = self.counts[:, start:start + chunk]
            pos_int = c[pos_groups].sum(0)
            pos = pos_int.flip(-1).to(torch.float64)  # highest bin first
            neg = (c.sum(0) - pos_int).flip(-1).to(torch.float64)
            out[start:start + chunk] = _histogram_ap(pos, neg)
        return out

    def median(self, group: int | Sequence[int], units: torch.Tensor) -> torch.Tensor:
        """Median response of ``units`` over the sentences of ``group``, interpolated inside its bin."""
        self.flush()
        gs = [group] if isinstance(group, int) else list(group)
        units = torch.as_tensor(units, dtype=torch.long)
        c = self.counts[gs][:, units].to(torch.float64).sum(0)  # [k, bins + 2]
        cum = c.cumsum(-1)
        half = cum[:, -1:] / 2
        b = torch.searchsorted(cum, half).squeeze(-1).clamp(max=c.shape[-1] - 1)  # first bin with cum >= half
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)[:, None]).squeeze(1), torch.zeros_like(half[:, 0]))
        inside = c.gather(1, b[:, None]).squeeze(1).clamp_min(1)
        frac = ((half[:, 0] - before) / inside).clamp(0, 1)
        low, width = self.low[units].double(), self.width[units].double()
        left = low + (b - 1).double() * width
        right = left + width
        lo_obs = self.minimum[gs][:, units].min(0).values.double()
        hi_obs = self.maximum[gs][:, units].max(0).values.double()
        left = torch.where(b == 0, lo_obs, left)
        right = torch.where(b == 0, low, right)
        left = torch.where(b == c.shape[-1] - 1, low + self.bins * width, left)
        right = torch.where(b == c.shape[-1] - 1, hi_obs, right)
        return (left + frac * (right - left)).float()


# ----------------------------------------------------------------------------------------------------------
# Unit responses from plain forward hooks
# ----------------------------------------------------------------------------------------------------------

def unit_module(layer: torch.nn.Module, component: str) -> torch.nn.Module:
    """The module (inside one decoder layer) whose input holds ``component``'s units."""
    if component not in UNIT_COMPONENTS:
        raise ValueError(f"component: expected one of {sorted(UNIT_COMPONENTS)}, got {component!r}")
    for path in UNIT_COMPONENTS[component]:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(f"component: {component!r} not found in {type(layer).__name__} "
                     f"(looked for {UNIT_COMPONENTS[component]})")


def unit_modules(model, components: Sequence[str]) -> list[tuple[str, int, torch.nn.Module]]:
    """(component, layer, module) for every block of units; ``mlp_hidden`` resolves as :func:`steer` does."""
    layers = decoder_layers(model)
    out = []
    for c in components:
        for i, layer in enumerate(layers):
            if c == "mlp_hidden":
                out.append((c, i, unwrap(model).get_submodule(resolve(model, c, i).module_path)))
            else:
                out.append((c, i, unit_module(layer, c)))
    return out


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
        from interventions.components import COMPONENTS
        from interventions.config import SetIntervention

        bad = sorted({c for c, _, _ in self.blocks if c not in COMPONENTS} & {c for c, _, _, _ in self.top(k)})
        if bad:
            raise ValueError(f"components: {bad} can be measured but not yet applied by steer(); "
                             f"rank with components=('mlp_hidden',) to build a config")

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


def flores_contrast(languages: Sequence[str] = DEFAULT_LANGUAGES, n: int = 200, split: str = "dev"
                    ) -> tuple[list[str], list[int]]:
    """The first ``n`` FLORES sentences of each language, interleaved (so every batch mixes languages)."""
    from evaluate.loaders import load_flores

    per = [load_flores(lang, split)[:n] for lang in languages]
    texts, groups = [], []
    for i in range(n):
        for g, sents in enumerate(per):
            if i < len(sents):
                texts.append(sents[i])
                groups.append(g)
    return texts, groups


def find_experts(model, tokenizer, languages: Sequence[str] = DEFAULT_LANGUAGES, *, targets: Sequence[str] | None
                 = None, n: int = 200, k_max: int = 1000, components: Sequence[str] = ("mlp_hidden",),
                 bins: int = 512, batch_size: int = 16, split: str = "dev", progress: bool = True
                 ) -> dict[str, ExpertRanking]:
    """Rank the units of ``model`` as experts of each target language against the other ``languages``.

    One streaming pass over ``n`` FLORES ``split`` sentences per language; returns a ranking per target
    (default: every language but English) holding the AP of every unit and the top ``k_max`` medians.
    """
    languages = list(languages)
    targets = [t for t in languages if t != "en"] if targets is None else list(targets)
    for t in targets:
        if t not in languages:
            raise ValueError(f"targets: {t!r} is not among languages {languages}")
    texts, groups = flores_contrast(languages, n, split)
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
        source = {"method": "finding_experts", "language": t, "negatives": [x for x in languages if x != t],
                  "data": f"flores200/{split}", "n_per_language": n, "response": "max_over_tokens",
                  "value": "median_over_positives", "components": list(components), "bins": bins,
                  "model": model_id(model)}
        out[t] = ExpertRanking(t, blocks, ap, order, acc.median(g, order), source)
    return out


def unit_widths(model, components: Sequence[str]) -> list[int]:
    """Number of units of every (component, layer) block: the input width of its projection."""
    widths = []
    for _, _, m in unit_modules(model, components):
        base = getattr(m, "base_layer", m)  # a PEFT LoRA wrapper keeps the projection as base_layer
        w = getattr(base, "in_features", None)
        widths.append(int(w) if w is not None else int(base.weight.shape[0]))  # Conv1D (gpt2): weight [in, out]
    return widths


if __name__ == "__main__":
    from interventions.experts_cli import main

    raise SystemExit(main())
