"""Activation collection: one forward of the decoder stack per batch for every layer at once.

Layers are the outputs of the decoder layers (``block_output``: the residual stream after layer
``l``, ``l = 0 .. L-1``), read with forward hooks on the decoder-layer modules, never from
``output_hidden_states`` (transformers applies the final norm to its last entry for many models).

Collection runs the decoder stack only (no LM head: the logits of a 262k vocabulary cost more than
the whole stack of a small model). Each example is reduced inside the hook, either at its ``last``
real token or as a padding-aware ``mean`` over its tokens (special tokens such as ``<bos>`` excluded:
the first token's residual norm is orders of magnitude larger than the others' and would dominate
the mean). :func:`collect_activations` / :func:`collect_paired` keep only running sums, so memory is
O(layers x hidden) (O(layers x hidden^2) for paired PCA), whatever n; :func:`sentence_representations`
keeps every example (per-item states, e.g. for out-of-fold vectors or permutation tests).

``residual_norm[l]``: mean L2 norm of the residual stream at layer ``l`` over all real, non-special
tokens of the collection data (a descriptive scale, recorded in provenance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interventions.components import decoder_layers, decoder_stack, hidden_size

REDUCTIONS = ("last", "mean")


# --------------------------------------------------------------------------- model plumbing

def _device(model) -> torch.device:
    return next(model.parameters()).device


class _StopForward(Exception):
    pass


def tokenize(tokenizer, texts: Sequence[str], device=None, exclude_special: bool = True,
             max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch; also return ``token_mask`` (real tokens, special ones excluded by default) for pooling and
    ``position_ids`` from the attention mask, as generate() does (a left-padded row then equals the unpadded one)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts: expected a sequence of strings")
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=max_length is not None,
                    max_length=max_length, return_special_tokens_mask=True)
    attention = enc["attention_mask"].bool()
    token_mask = attention & ~enc["special_tokens_mask"].bool() if exclude_special else attention.clone()
    empty = token_mask.sum(1) == 0  # a text of special tokens only: pool over what is there
    token_mask[empty] = attention[empty]
    position_ids = (enc["attention_mask"].long().cumsum(1) - 1).clamp(min=0)
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_mask": token_mask,
           "position_ids": position_ids}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def _forward_reduced(model, batch, reduce: str, layers: Sequence[int]):
    """One forward of the decoder stack; returns reduced [n_layers, B, H] and per-layer token-norm sums."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    modules = decoder_layers(model)
    wanted = {l: i for i, l in enumerate(layers)}
    last_needed = max(layers)
    attn = batch["attention_mask"]
    mask = batch["token_mask"]
    n_tok = mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(attn.shape[1], device=attn.device)
    last_idx = torch.where(attn.bool(), positions, -1).max(1).values
    reduced: list[torch.Tensor | None] = [None] * len(layers)
    norm_sum = torch.zeros(len(layers), dtype=torch.float64)
    norm_sq = torch.zeros(len(layers), dtype=torch.float64)

    def make_hook(layer):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            h = h.float()
            if reduce == "last":
                r = h[torch.arange(h.shape[0], device=h.device), last_idx]
            else:  # where() rather than a product: padded rows may hold NaN/inf in some kernels
                r = torch.where(mask[..., None], h, 0.0).sum(1) / n_tok
            i = wanted[layer]
            reduced[i] = r.detach().cpu()
            norms = torch.where(mask, h.norm(dim=-1), 0.0)
            norm_sum[i] = norms.sum().double().cpu()
            norm_sq[i] = norms.pow(2).sum().double().cpu()
            if layer == last_needed:
                raise _StopForward
        return hook

    handles = [modules[l].register_forward_hook(make_hook(l)) for l in layers]
    try:
        with torch.no_grad():
            decoder_stack(model)(input_ids=batch["input_ids"], attention_mask=attn,
                                 position_ids=batch["position_ids"], use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(reduced), norm_sum, norm_sq, int(mask.sum())


def _resolve_layers(model, layers) -> list[int]:
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    layers = [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n]
    if bad or not layers:
        raise ValueError(f"layers: expected indices in 0..{n - 1}, got {layers}")
    return layers


def iter_reduced(model, tokenizer, texts: Sequence[str], reduce: str = "mean", batch_size: int = 16,
                 layers: Sequence[int] | None = None, progress: bool = True, desc: str = "collect",
                 exclude_special: bool = True, max_length: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Yield ``(reduced [n_layers, B, H], token_norm_sum [n_layers], token_norm_sq [n_layers], n_tokens)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    layers = _resolve_layers(model, layers)
    device = _device(model)
    starts = range(0, len(texts), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        batch = tokenize(tokenizer, texts[s:s + batch_size], device, exclude_special, max_length)
        yield _forward_reduced(model, batch, reduce, layers)


# --------------------------------------------------------------------------- running statistics

@dataclass
class ActivationStats:
    """Per-layer running sums of reduced activations (float64) plus token-level residual norms."""

    layers: list[int]
    reduce: str
    sum: torch.Tensor                 # [n_layers, H]
    count: int = 0                    # examples
    norm_sum: torch.Tensor = None     # [n_layers] sum of ||reduced example||
    norm_sq_sum: torch.Tensor = None  # [n_layers]
    token_norm_sum: torch.Tensor = None  # [n_layers] sum over real tokens of ||h||
    token_norm_sq_sum: torch.Tensor = None
    token_count: int = 0

    @classmethod
    def empty(cls, layers, hidden: int, reduce: str) -> "ActivationStats":
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        return cls(list(layers), reduce, z(len(layers), hidden), 0, z(len(layers)), z(len(layers)),
                   z(len(layers)), z(len(layers)), 0)

    def update(self, reduced: torch.Tensor, tok_norm: torch.Tensor, tok_norm_sq: torch.Tensor, n_tok: int):
        r = reduced.double()
        self.sum += r.sum(1)
        self.count += r.shape[1]
        norms = r.norm(dim=-1)
        self.norm_sum += norms.sum(1)
        self.norm_sq_sum += norms.pow(2).sum(1)
        self.token_norm_sum += tok_norm
        self.token_norm_sq_sum += tok_norm_sq
        self.token_count += n_tok

    @property
    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("ActivationStats: no examples were collected")
        return (self.sum / self.count).float()

    @property
    def residual_norms(self) -> torch.Tensor:
        """Mean L2 norm of the residual stream per layer over real tokens: the scale for coefficients."""
        return (self.token_norm_sum / max(self.token_count, 1)).float()

    @property
    def example_norms(self) -> torch.Tensor:
        """Mean L2 norm of the reduced (pooled / last-token) example vectors per layer."""
        return (self.norm_sum / max(self.count, 1)).float()


@dataclass
class PairedStats:
    """Running sums of paired differences ``d = h(pos) - h(neg)`` per layer, for :func:`pca`."""

    positive: ActivationStats
    negative: ActivationStats
    diff_sum: torch.Tensor    # [n_layers, H]
    diff_outer: torch.Tensor  # [n_layers, H, H] sum of d d^T
    count: int = 0

    @property
    def layers(self) -> list[int]:
        return self.positive.layers


def collect_activations(model, tokenizer, texts: Sequence[str], reduce: str = "last", batch_size: int = 16,
                        progress: bool = True, layers: Sequence[int] | None = None) -> ActivationStats:
    """Running per-layer sums of every example's reduced ``block_output`` (one forward per batch)."""
    if len(texts) == 0:
        raise ValueError("texts: expected at least one text")
    layers = _resolve_layers(model, layers)
    stats = ActivationStats.empty(layers, hidden_size(model), reduce)
    for out in iter_reduced(model, tokenizer, texts, reduce, batch_size, layers, progress):
        stats.update(*out)
    return stats


def collect_paired(model, tokenizer, positive_texts: Sequence[str], negative_texts: Sequence[str],
                   reduce: str = "last", batch_size: int = 16, progress: bool = True,
                   layers: Sequence[int] | None = None) -> PairedStats:
    """Like :func:`collect_activations` on pairs; also accumulates sum(d) and sum(d d^T) per layer."""
    if len(positive_texts) != len(negative_texts) or not positive_texts:
        raise ValueError(f"positive_texts/negative_texts: expected two non-empty lists of equal length, got "
                         f"{len(positive_texts)} and {len(negative_texts)}")
    layers = _resolve_layers(model, layers)
    hidden = hidden_size(model)
    pos = ActivationStats.empty(layers, hidden, reduce)
    neg = ActivationStats.empty(layers, hidden, reduce)
    diff_sum = torch.zeros(len(layers), hidden, dtype=torch.float64)
    diff_outer = torch.zeros(len(layers), hidden, hidden, dtype=torch.float64)
    pos_iter = iter_reduced(model, tokenizer, positive_texts, reduce, batch_size, layers, progress, "pairs")
    neg_iter = iter_reduced(model, tokenizer, negative_texts, reduce, batch_size, layers, False)
    for p, n in zip(pos_iter, neg_iter):
        pos.update(*p)
        neg.update(*n)
        d = (p[0] - n[0]).double()  # [n_layers, B, H]
        diff_sum += d.sum(1)
        diff_outer += torch.einsum("lbi,lbj->lij", d, d)
    return PairedStats(pos, neg, diff_sum, diff_outer, pos.count)


def sentence_representations(model, tokenizer, texts: Sequence[str], layers: Sequence[int] | None = None,
                             pooling: str = "mean", batch_size: int = 16, progress: bool = True,
                             exclude_special: bool = True, max_length: int | None = None) -> torch.Tensor:
    """Per-example pooled ``block_output`` vectors: ``Tensor[n_layers, n, hidden]`` (float32, CPU).

    ``exclude_special=False`` pools over every non-padding token (``<bos>`` included); ``max_length``
    truncates each text to that many tokens.
    """
    if len(texts) == 0:
        raise ValueError("texts: expected at least one text")
    parts = [r for r, *_ in iter_reduced(model, tokenizer, texts, pooling, batch_size, layers, progress, "represent",
                                         exclude_special, max_length)]
    return torch.cat(parts, dim=1)
