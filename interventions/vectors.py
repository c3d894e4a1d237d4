"""Steering vectors: the estimators from paired texts, and interventions in the vector's own units.

Activations are collected by :mod:`interventions.activations` (re-exported here): the residual stream
after every decoder layer (``block_output``), one forward of the decoder stack per batch.

Definitions (used in configs' ``source`` and in the README):

* ``mean_difference[l] = mean_i h_l(positive_i) - mean_j h_l(negative_j)``.
* ``pca[l]``: first principal component of the paired differences ``d_i = h_l(pos_i) - h_l(neg_i)``
  (eigenvector of their covariance, centred, with the largest eigenvalue), sign-aligned so that
  ``pca[l] . mean_difference[l] >= 0``, scaled to the norm of ``mean_difference[l]``.
* ``alpha`` (the strength): multiples of the estimated mean difference at that layer. The added vector is
  ``coefficient * v[l]`` with ``coefficient = alpha * alpha_scale[l]`` and
  ``alpha_scale[l] = (mean_difference[l] . v[l]) / ||v[l]||^2``: alpha = 1 adds exactly the estimated mean
  difference (its projection onto ``v[l]``), e.g. moves L's centroid onto English's for EN; alpha = 0 is
  the unsteered model bit for bit. For a ``mean_difference`` vector ``alpha_scale = 1`` (coefficient ==
  alpha). Comparable across layers, whose ``||v[l]||`` differ ~30x.

The experiment's two contrasts (the EN-transfer vector from parallel FLORES sentences, the LOC-cultural
vector from explicit/implicit country-cue prompts) choose their texts in :mod:`evaluate.contrasts`, which
calls :func:`contrast_vectors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from interventions.activations import (  # noqa: F401  (re-exported: the collection API lives there)
    REDUCTIONS,
    ActivationStats,
    PairedStats,
    collect_activations,
    collect_paired,
    iter_reduced,
    sentence_representations,
    tokenize,
)
from interventions.components import decoder_layers, decoder_stack, hidden_size  # noqa: F401

ALPHA_DEFINITION = ("alpha = multiples of the estimated mean difference at this layer: coefficient = alpha * "
                    "alpha_scale, alpha_scale = (mean_difference . v) / ||v||^2; alpha = 1 adds the estimated "
                    "mean difference (its projection onto v), alpha = 0 leaves the model unsteered")

# --------------------------------------------------------------------------- estimators

def mean_difference(positive: ActivationStats, negative: ActivationStats) -> torch.Tensor:
    """``mean h(positive) - mean h(negative)`` per layer: ``Tensor[n_layers, hidden]``."""
    if positive.layers != negative.layers:
        raise ValueError(f"layers: positive {positive.layers} and negative {negative.layers} differ")
    return positive.mean - negative.mean


def pca(paired: PairedStats, scale: str = "mean_difference") -> torch.Tensor:
    """First principal component of the paired differences per layer, sign-aligned with their mean.

    ``scale="mean_difference"`` gives each layer's component the norm of that layer's mean
    difference; ``scale="unit"`` leaves it unit-norm.
    """
    if paired.count < 2:
        raise ValueError(f"pca: needs at least 2 pairs, got {paired.count}")
    if scale not in ("mean_difference", "unit"):
        raise ValueError(f"scale: expected 'mean_difference' or 'unit', got {scale!r}")
    n = paired.count
    mu = paired.diff_sum / n  # [L, H]
    cov = paired.diff_outer / n - torch.einsum("li,lj->lij", mu, mu)
    _, eigvecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = eigvecs[..., -1]  # [L, H] unit
    sign = torch.sign((top * mu).sum(-1, keepdim=True))
    top = top * torch.where(sign == 0, torch.ones_like(sign), sign)
    if scale == "mean_difference":
        top = top * mu.norm(dim=-1, keepdim=True)
    return top.float()


def alpha_scale(vectors: torch.Tensor, mean_differences: torch.Tensor) -> torch.Tensor:
    """``(mean_difference[l] . v[l]) / ||v[l]||^2`` per layer: the coefficient of ``v[l]`` at ``alpha = 1``.

    ``coefficient = alpha * alpha_scale[l]`` then adds ``alpha`` times the mean difference's projection onto
    ``v[l]`` (all of it for a ``mean_difference`` vector, whose scale is 1). A zero vector gets scale 0.
    """
    v, m = vectors.double(), mean_differences.double()
    if v.shape != m.shape:
        raise ValueError(f"mean_differences: expected shape {tuple(v.shape)} (one per vector), got {tuple(m.shape)}")
    sq = v.pow(2).sum(-1)
    return torch.where(sq > 0, (v * m).sum(-1) / torch.where(sq > 0, sq, 1.0), 0.0).float()


# --------------------------------------------------------------------------- EN / LOC vectors

@dataclass
class SteeringVectors:
    """One estimated direction per layer, what ``alpha = 1`` means at each, and where they came from.

    ``alpha_scale[l]`` is the coefficient of ``vectors[l]`` at ``alpha = 1`` (:func:`alpha_scale`); when not
    given it is read from ``source["alpha_scale"]``, else 1 for ``source["method"] == "mean_difference"``
    (else alpha is undefined and only absolute coefficients can be used). ``positions`` is where the
    interventions apply by default (from ``source["positions"]``, else ``"all"``).
    """

    name: str
    vectors: torch.Tensor          # [n_layers, hidden]
    layers: list[int]
    residual_norms: torch.Tensor   # [n_layers] mean token norm of the data the vectors came from (descriptive)
    source: dict[str, Any] = field(default_factory=dict)
    alpha_scale: torch.Tensor | None = None  # [n_layers]
    positions: str | None = None

    def __post_init__(self):
        from interventions.config import POSITIONS

        if self.alpha_scale is None and self.source.get("alpha_scale") is not None:
            self.alpha_scale = torch.tensor([float(x) for x in self.source["alpha_scale"]])
        if self.alpha_scale is None and self.source.get("method", "mean_difference") == "mean_difference":
            self.alpha_scale = torch.ones(len(self.layers))
        if self.alpha_scale is not None and tuple(self.alpha_scale.shape) != (len(self.layers),):
            raise ValueError(f"{self.name}: alpha_scale: expected shape ({len(self.layers)},) (one per layer), "
                             f"got {tuple(self.alpha_scale.shape)}")
        if self.positions is None:
            self.positions = self.source.get("positions", "all")
        if self.positions not in POSITIONS:
            raise ValueError(f"{self.name}: positions: expected one of {list(POSITIONS)}, got {self.positions!r}")

    def vector(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise ValueError(f"layer: expected one of {self.layers}, got {layer}")
        return self.vectors[self.layers.index(layer)]

    def intervention(self, layer: int, alpha: float | None = None, coefficient: float | None = None,
                     positions: str | None = None, name: str | None = None):
        return steering_vector(self, layer, alpha=alpha, coefficient=coefficient, positions=positions, name=name)


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def steering_vector(vectors: SteeringVectors, layer: int, alpha: float | None = None,
                    coefficient: float | None = None, positions: str | None = None, name: str | None = None):
    """An ``AdditiveIntervention`` adding ``coefficient * v[layer]`` on ``block_output`` at ``layer``.

    Give either ``alpha`` (multiples of the estimated mean difference: ``coefficient = alpha *
    alpha_scale[layer]``, see the module docstring) or an absolute ``coefficient``. ``positions`` defaults to
    the vectors' own (``"prompt"`` for EN, ``"last"`` for LOC). The ``source`` records alpha, the
    coefficient, ``alpha_scale`` and the definition, whichever was given.
    """
    from interventions.config import AdditiveIntervention

    if (coefficient is None) == (alpha is None):
        raise ValueError("steering_vector: give exactly one of alpha= or coefficient=")
    v = vectors.vector(layer)
    i = vectors.layers.index(layer)
    scale = None if vectors.alpha_scale is None else float(vectors.alpha_scale[i])
    if alpha is not None:
        alpha = _number(alpha, "alpha")
        if scale is None:
            raise ValueError(f"alpha: undefined for vectors {vectors.name!r} (method "
                             f"{vectors.source.get('method')!r}, no alpha_scale); give coefficient= instead")
        coefficient = alpha * scale
    else:
        coefficient = _number(coefficient, "coefficient")
        alpha = coefficient / scale if scale else None
    source = dict(vectors.source, layer=int(layer), alpha=alpha, coefficient=float(coefficient), alpha_scale=scale,
                  alpha_definition=ALPHA_DEFINITION, vector_norm=float(v.norm()),
                  residual_norm=float(vectors.residual_norms[i]))
    return AdditiveIntervention(name=name or vectors.name, component="block_output", layer=int(layer),
                                vector=v.clone(), coefficient=float(coefficient),
                                positions=positions or vectors.positions, source=source)


def _estimate(paired: PairedStats, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors and their :func:`alpha_scale` against the paired mean difference."""
    diff = mean_difference(paired.positive, paired.negative)
    if method == "mean_difference":
        return diff, torch.ones(len(paired.layers))
    if method == "pca":
        v = pca(paired)
        return v, alpha_scale(v, diff)
    raise ValueError(f"method: expected 'mean_difference' or 'pca', got {method!r}")


def _residual_norms(paired: PairedStats) -> torch.Tensor:
    both = paired.positive.token_norm_sum + paired.negative.token_norm_sum
    return (both / max(paired.positive.token_count + paired.negative.token_count, 1)).float()


def _steering_vectors(name: str, paired: PairedStats, method: str, positions: str, source: dict) -> SteeringVectors:
    vecs, scale = _estimate(paired, method)
    source = dict(source, method=method, n_prompts=paired.count, component="block_output", positions=positions,
                  alpha_scale=[float(x) for x in scale], alpha_definition=ALPHA_DEFINITION)
    return SteeringVectors(name, vecs, paired.layers, _residual_norms(paired), source, scale, positions)


def contrast_vectors(model, tokenizer, name: str, positive_texts: Sequence[str], negative_texts: Sequence[str],
                     source: dict, reduce: str = "mean", method: str = "mean_difference", batch_size: int = 16,
                     progress: bool = True, positions: str = "all") -> SteeringVectors:
    """v[l] = the ``method`` estimate of mean h_l(positive_texts) - mean h_l(negative_texts), paired by index.

    ``source`` (what the texts are) is extended with the method, the prompt count, ``alpha_scale`` and the
    alpha definition. The experiment's EN / LOC contrasts (which texts) are built in
    :mod:`evaluate.contrasts`.
    """
    paired = collect_paired(model, tokenizer, positive_texts, negative_texts, reduce=reduce, batch_size=batch_size,
                            progress=progress)
    return _steering_vectors(name, paired, method, positions, dict(source, reduce=reduce))
