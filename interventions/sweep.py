"""Layer x coefficient sweeps of a steering vector on both axes, and the selection rules.

For every (layer, coefficient) the model is steered with ``vectors.intervention(layer, ...)`` and the
``extract`` items of both axes are scored with :func:`evaluate.scoring.score_items`:

* ``transfer_score`` -- accuracy (gold chosen) over the transfer items;
* ``localization_score`` -- local answer chosen over the localization items;

and each is also given as a gain over the unsteered model (``transfer_gain``, ``localization_gain``).

Selection (chosen on ``extract``; report on ``test`` only):

* EN: the (layer, coefficient) maximising ``transfer_gain`` with ``localization_gain >= -tolerance``;
* LOC: the (layer, coefficient) maximising ``localization_gain`` with ``transfer_gain >= -tolerance``;
* Surgical Steering: both chosen interventions applied at once (:func:`surgical_config`).

:func:`sweep` runs every (layer, coefficient) with a full forward (the reference); :func:`cached_sweep`
gives the same rows from ONE unsteered pass that records every grid layer's output and the KV-cache
updates below it, then replays layers <= l for every cell at layer l, so only the layers above l run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from interventions.vectors import SteeringVectors


def _accuracy(items, scores, attr: str) -> float | None:
    pairs = [(getattr(it, attr), s.choice) for it, s in zip(items, scores) if getattr(it, attr) is not None]
    return sum(a == c for a, c in pairs) / len(pairs) if pairs else None


def evaluate_axes(model, tokenizer, transfer_items: Sequence, localization_items: Sequence, batch_size: int = 16
                  ) -> dict[str, float | None]:
    """``transfer_score`` (gold accuracy) and ``localization_score`` (local-answer rate) of ``model`` now."""
    from evaluate.scoring import score_items

    t = score_items(model, tokenizer, transfer_items, batch_size=batch_size, progress=False)
    l = score_items(model, tokenizer, localization_items, batch_size=batch_size, progress=False)
    return {"transfer_score": _accuracy(transfer_items, t, "gold"),
            "localization_score": _accuracy(localization_items, l, "local")}


def _gain(value, base):
    return None if value is None or base is None else value - base


def _row(vectors: SteeringVectors, layer: int, inter, alpha: float | None, scores: dict, base: dict) -> dict:
    """One sweep cell: the intervention's coefficient (and ``alpha`` when relative), scores and gains."""
    return {"vector": vectors.name, "layer": int(layer), "coefficient": float(inter.coefficient),
            "alpha": None if alpha is None else float(alpha), **scores,
            "transfer_gain": _gain(scores["transfer_score"], base["transfer_score"]),
            "localization_gain": _gain(scores["localization_score"], base["localization_score"]),
            "base_transfer_score": base["transfer_score"], "base_localization_score": base["localization_score"]}


def sweep(model, tokenizer, vectors: SteeringVectors, layers: Sequence[int], coefficients: Sequence[float],
          transfer_items: Sequence, localization_items: Sequence, relative: bool = False, positions: str = "all",
          batch_size: int = 16, progress: bool = True) -> list[dict[str, Any]]:
    """One row per (layer, coefficient) with both scores and their gains over the unsteered model.

    ``relative=True`` reads each coefficient as ``alpha`` (``alpha * residual_norm / ||v||``).
    """
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    if not layers or not coefficients:
        raise ValueError("sweep: expected at least one layer and one coefficient")
    if not transfer_items and not localization_items:
        raise ValueError("sweep: expected transfer_items or localization_items")
    base = evaluate_axes(model, tokenizer, transfer_items, localization_items, batch_size)
    rows = []
    grid = [(l, c) for l in layers for c in coefficients]
    for layer, coef in tqdm(grid, desc=f"sweep {vectors.name}", disable=not progress, unit="cell"):
        kw = {"alpha": coef} if relative else {"coefficient": coef}
        inter = vectors.intervention(layer, positions=positions, **kw)
        with steer(model, InterventionConfig.for_model(model, [inter])):
            scores = evaluate_axes(model, tokenizer, transfer_items, localization_items, batch_size)
        rows.append(_row(vectors, layer, inter, coef if relative else None, scores, base))
    return rows


RULES = {
    "en": ("transfer_gain", "localization_gain"),
    "loc": ("localization_gain", "transfer_gain"),
}


def select(rows: Sequence[dict], rule: str, tolerance: float = 0.01) -> dict | None:
    """The row maximising the rule's gain with the other axis' loss <= ``tolerance`` (None if none qualifies).

    ``rule="en"``: maximise ``transfer_gain`` s.t. ``localization_gain >= -tolerance``; ``rule="loc"`` the
    reverse. Ties go to the smaller |coefficient|, then the earlier layer. A missing axis does not constrain.
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    gain, other = RULES[rule]
    ok = [r for r in rows if r.get(gain) is not None and (r.get(other) is None or r[other] >= -tolerance)]
    if not ok:
        return None
    return max(ok, key=lambda r: (r[gain], -abs(r["coefficient"]), -r["layer"]))


def surgical_config(model, en: SteeringVectors, en_row: dict, loc: SteeringVectors, loc_row: dict,
                    provenance: dict | None = None, positions: str = "all"):
    """Both selected interventions at once, with the selection recorded in each ``source``."""
    from interventions.config import InterventionConfig

    inters = []
    for vec, row, rule in ((en, en_row, "en"), (loc, loc_row, "loc")):
        inter = vec.intervention(row["layer"], coefficient=row["coefficient"], positions=positions)
        inter.source.update({"selection_rule": rule, "selected_on": "extract",
                             "selection_scores": {k: row.get(k) for k in ("transfer_score", "localization_score",
                                                                           "transfer_gain", "localization_gain")},
                             **(provenance or {})})
        inters.append(inter)
    return InterventionConfig.for_model(model, inters)


def save_sweep(rows: Sequence[dict], path: str | Path) -> Path:
    """The sweep table as JSON (a list of rows, sorted keys) at ``path`` and a CSV of the same rows beside it."""
    from evaluate.analysis import write_csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    write_csv(list(rows), path.with_suffix(".csv"))
    return path


# --------------------------------------------------------------------------- prefix-cached sweep

class _PrefixCache:
    """Record once, then replay, what decoder layers 0..l produce, for every grid layer l at once.

    Steering ``block_output`` at ``l`` leaves layers <= ``l`` unchanged, and the scorer makes the same
    sequence of decoder calls for every cell. So ONE unsteered pass records, per decoder call, the output of
    every grid layer and every KV-cache update of layers <= max(grid). Replaying layer ``l`` replaces the
    forward of layers 0..l: the recorded cache updates are re-applied (the cache object ends up exactly as
    in a full forward), hidden states are passed through, and layer ``l`` returns its recorded output, on
    which the steering hook still fires; only layers > ``l`` run.

    Memory: what is recorded lives until the sweep ends: per decoder call, ``len(grid)`` hidden-state
    tensors ``[batch, tokens, hidden]`` and ``max(grid) + 1`` key/value pairs ``[batch, kv_heads, tokens,
    head_dim]``, linear in the items' prompt and answer tokens. Measured on gemma-3-270m (float32, ko,
    layers {9, 12, 15}): 38 MiB for 8 fact_probe + 8 locale_probe extract items, 133 MiB for 32 + 21.
    Meant for the small ``extract`` item sets of a sweep, not for whole benchmarks. The keys/values are
    kept (not only their shapes) although no replayed layer reads them: a model whose later layers
    share an earlier layer's cache would read them.
    """

    def __init__(self, model, layers: Sequence[int]):
        from interventions.components import decoder_layers, decoder_stack

        self.modules = decoder_layers(model)
        self.stack = decoder_stack(model)
        self.grid = sorted({int(l) for l in layers})
        if self.grid[0] < 0 or self.grid[-1] >= len(self.modules):
            raise ValueError(f"layers: expected layers in 0..{len(self.modules) - 1}, got {list(layers)}")
        self.top = self.grid[-1]
        self.outputs: dict[int, list] = {l: [] for l in self.grid}
        self.updates: list[dict[int, list]] = []  # per call: layer -> [(key, value, args, kwargs), ...]
        self.shapes: list[tuple] = []  # per call: the input ids' shape, to refuse a replay of other inputs
        self.call = -1

    @staticmethod
    def _shape(args, kwargs) -> tuple:
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        x = args[0] if x is None and args else x
        return tuple(x.shape) if hasattr(x, "shape") else ()

    def _count(self, module, args, kwargs):
        self.call += 1
        if self.call >= len(self.updates) or self._shape(args, kwargs) != self.shapes[self.call]:
            raise RuntimeError("sweep: this decoder call does not match the recorded pass (more calls or other "
                               "shapes); the replayed scoring must use the same items and batch size")

    def record(self):
        from transformers import cache_utils

        outer = self
        original = cache_utils.Cache.update

        def update(cache, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx <= outer.top:
                outer.updates[outer.call].setdefault(layer_idx, []).append((key_states, value_states, args, kwargs))
            return original(cache, key_states, value_states, layer_idx, *args, **kwargs)

        def pre(module, args, kwargs):
            self.call += 1
            self.updates.append({})
            self.shapes.append(self._shape(args, kwargs))

        def post(layer):
            def hook(module, args, output):
                self.outputs[layer].append(output)
            return hook

        handles = [self.stack.register_forward_pre_hook(pre, with_kwargs=True)]
        handles += [self.modules[l].register_forward_hook(post(l)) for l in self.grid]
        return _Patched(handles, [(cache_utils.Cache, "update", update, original)], self)

    def replay(self, layer: int):
        """Inside the block, layers 0..``layer`` (a grid layer) are replayed from the record."""
        if layer not in self.outputs:
            raise ValueError(f"layer: {layer} was not recorded; expected one of {self.grid}")
        outer = self

        def make(j):
            def forward(hidden_states, *args, **kwargs):
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
                for k, v, a, kw in outer.updates[outer.call].get(j, []):
                    if cache is None:
                        raise RuntimeError("sweep: the recorded pass used a KV cache but this call has none")
                    cache.update(k.clone(), v.clone(), j, *a, **kw)
                return _clone(outer.outputs[layer][outer.call]) if j == layer else hidden_states
            return forward

        patches = [(self.modules[j], "forward", make(j), None) for j in range(layer + 1)]
        return _Patched([self.stack.register_forward_pre_hook(self._count, with_kwargs=True)], patches, self)


def _clone(output):
    if isinstance(output, tuple):
        return tuple(o.clone() if hasattr(o, "clone") else o for o in output)
    return output.clone()


class _Patched:
    def __init__(self, handles, patches, owner):
        self.handles, self.patches, self.owner = handles, patches, owner

    def __enter__(self):
        self.owner.call = -1
        for obj, name, new, _ in self.patches:
            setattr(obj, name, new)
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        for obj, name, _, original in self.patches:
            if original is None:
                delattr(obj, name)  # back to the class's forward
            else:
                setattr(obj, name, original)


def cached_sweep(model, tokenizer, vectors: SteeringVectors, layers: Sequence[int], coefficients: Sequence[float],
                 transfer_items: Sequence, localization_items: Sequence, relative: bool = False,
                 positions: str = "all", batch_size: int = 16, progress: bool = True) -> list[dict[str, Any]]:
    """:func:`sweep`'s rows, with ONE unsteered pass for the whole grid (it is also the baseline).

    That pass records every grid layer's output and the KV-cache updates of layers <= max(layers)
    (:class:`_PrefixCache`; memory grows with the item count, fine for ``extract`` sets); each
    (layer, coefficient) cell then runs only the layers above its layer. Cells that are the same
    computation as one already done are not recomputed: coefficient 0 is the baseline (``h + 0 * v == h``
    bit for bit), and a repeated (layer, coefficient) is scored once.
    """
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    if not layers or not coefficients:
        raise ValueError("sweep: expected at least one layer and one coefficient")
    if not transfer_items and not localization_items:
        raise ValueError("sweep: expected transfer_items or localization_items")
    prefix = _PrefixCache(model, layers)
    with prefix.record():  # the unsteered pass: the baseline and the prefix cache of every grid layer at once
        base = evaluate_axes(model, tokenizer, transfer_items, localization_items, batch_size)
    rows, done = [], {}
    grid = [(l, c) for l in layers for c in coefficients]
    for layer, coef in tqdm(grid, desc=f"cached sweep {vectors.name}", disable=not progress, unit="cell"):
        kw = {"alpha": coef} if relative else {"coefficient": coef}
        inter = vectors.intervention(layer, positions=positions, **kw)
        key = (int(layer), float(inter.coefficient))
        if inter.coefficient == 0.0 and bool(inter.vector.isfinite().all()):
            done[key] = base  # adding 0 * v leaves every activation bit for bit as it is: the baseline's pass
        if key not in done:  # a repeated cell is the same computation: scored once
            with steer(model, InterventionConfig.for_model(model, [inter])), prefix.replay(int(layer)):
                done[key] = evaluate_axes(model, tokenizer, transfer_items, localization_items, batch_size)
        rows.append(_row(vectors, layer, inter, coef if relative else None, dict(done[key]), base))
    return rows
