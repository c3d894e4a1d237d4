"""Activations: the project's one recorder (:func:`record`), its one pooling (:func:`pool`), and the collectors.

:func:`record` hooks any component (:mod:`interventions.components`: ``block_output``, ``mlp_hidden``,
``attention_heads``, ...) of chosen layers, keeps or reduces what each forward produces there, optionally stops
the forward once everything is recorded, and always removes its hooks. Every reader of activations goes through
it: the collectors below, the experts' unit responses (:func:`interventions.experts.iter_unit_responses`),
retrieval (:func:`evaluate.retrieval.pooled_representations`, via :func:`sentence_representations`) and MidAlign's
training loss (:meth:`alignment.midalign.MidAlignTrainer.alignment_loss`, with gradients).

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

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interventions.components import INPUT_HOOK, decoder_layers, decoder_stack, hidden_size, resolve, unwrap

REDUCTIONS = ("last", "mean")


# --------------------------------------------------------------------------- the one pooling and the one recorder

POOLINGS = ("mean", "max", "last")

Reducer = Callable[[torch.Tensor, Any], Any]
"""A custom reduction for :func:`record`: ``(hidden [B, T, W], mask) -> what to keep`` (``mask``: what
:meth:`Recorder.run` was given)."""


def _device(model) -> torch.device:
    return next(model.parameters()).device


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """The project's one pooling: ``hidden [B, T, W]`` -> ``[B, W]`` over the positions where ``mask [B, T]`` is set.

    ``mean``: their mean (a row with none pools to 0); ``max``: their maximum (``-inf`` for a row with none);
    ``last``: the state at the last of them (the last position for a row with none). ``mask`` is
    :func:`tokenize`'s ``token_mask`` (no padding, no special tokens such as ``<bos>``) or, for ``last``, the
    attention mask. Masked-out positions never enter (``where``, not a product: padded rows may hold NaN/inf in
    some kernels); ``hidden``'s dtype is kept and gradients flow.
    """
    if how not in POOLINGS:
        raise ValueError(f"how: expected one of {POOLINGS}, got {how!r}")
    if hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"pool: expected hidden [B, T, W] and mask [B, T], got {tuple(hidden.shape)} and "
                         f"{tuple(mask.shape)}")
    mask = mask.bool()
    if how == "mean":
        return torch.where(mask[..., None], hidden, 0.0).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class _StopForward(Exception):
    pass


class Recorder:
    """What :func:`record` yields: its ``sites`` (``(component, layer)``, in order) and, in ``captured``, what the
    latest forward recorded at each of them."""

    def __init__(self, sites: list[tuple[str, int]], reduce: str | Reducer | None, stop_after: bool,
                 keep_grad: bool, dtype: torch.dtype | None):
        self.sites, self.reduce, self.stop_after, self.keep_grad, self.dtype = sites, reduce, stop_after, keep_grad, dtype
        self.captured: dict[tuple[str, int], Any] = {}
        self.mask: Any = None

    def _capture(self, site: tuple[str, int], hidden: torch.Tensor) -> None:
        if self.dtype is not None:
            hidden = hidden.to(self.dtype)
        if not self.keep_grad:
            hidden = hidden.detach()
        if self.reduce is None:
            value = hidden
        elif callable(self.reduce):
            value = self.reduce(hidden, self.mask)
        elif self.mask is None:
            raise ValueError(f"record: reduce={self.reduce!r} needs a mask; pass mask= to Recorder.run")
        else:
            value = pool(hidden, self.mask, self.reduce)
        self.captured[site] = value
        if self.stop_after and len(self.captured) == len(self.sites):
            raise _StopForward  # every site is recorded: the rest of the forward is not needed

    def run(self, module, *args, mask: Any = None, **kwargs) -> list:
        """Call ``module(*args, **kwargs)`` (the model, or :func:`decoder_stack` to skip the LM head) and return what
        it recorded, one value per site in order. ``mask``: this batch's pooling mask (see :func:`pool`), or what a
        custom reducer takes. The early stop ends the call here; without ``keep_grad`` it runs under ``no_grad``."""
        self.captured, self.mask = {}, mask
        try:
            with contextlib.nullcontext() if self.keep_grad else torch.no_grad():
                module(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            self.mask = None
        missing = [site for site in self.sites if site not in self.captured]
        if missing:
            raise RuntimeError(f"record: the forward never reached {missing}")
        return [self.captured[site] for site in self.sites]


def _module_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))


@contextlib.contextmanager
def record(model, layers: Sequence[int], component: str | Sequence[str] = "block_output",
           reduce: str | Reducer | None = None, *, stop_after: bool = True, keep_grad: bool = False,
           dtype: torch.dtype | None = torch.float32) -> Iterator[Recorder]:
    """Record ``component`` (one name of :data:`interventions.components.COMPONENTS`, or several) at ``layers``.

    Installs a forward hook (pre-hook for the inputs of a projection) on each resolved module
    (:func:`interventions.components.resolve`, as steering resolves them) and yields a :class:`Recorder`; run
    forwards through :meth:`Recorder.run`. Each value is cast to ``dtype`` (``None``: the model's), detached unless
    ``keep_grad``, then kept whole (``reduce=None``: ``[B, T, W]``), pooled (``"mean"``/``"max"``/``"last"``:
    :func:`pool` with the run's mask) or given to a custom reducer. ``stop_after``: the forward ends once every site
    is recorded (later layers and the LM head never run; what is recorded is unchanged). The hooks are always
    removed on leaving the block, on an exception too.
    """
    components = [component] if isinstance(component, str) else list(component)
    sites = [(c, int(l)) for c in components for l in layers]
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"record: expected distinct (component, layer) sites, got {sites}")
    if isinstance(reduce, str) and reduce not in POOLINGS:
        raise ValueError(f"reduce: expected None, a callable or one of {POOLINGS}, got {reduce!r}")
    recorder = Recorder(sites, reduce, stop_after, keep_grad, dtype)
    base = unwrap(model)
    handles = []
    try:
        for site in sites:
            where = resolve(model, *site)
            module = base.get_submodule(where.module_path)
            if where.hook_type == INPUT_HOOK:
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, kwargs, site=site: recorder._capture(site, _module_input(args, kwargs)),
                    with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(
                    lambda m, args, out, site=site: recorder._capture(
                        site, out[0] if isinstance(out, (tuple, list)) else out)))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- collection

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
    """One forward of the decoder stack (stopped after the last needed layer); returns reduced [n_layers, B, H] and
    per-layer token-norm sums."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    attn, mask = batch["attention_mask"], batch["token_mask"]

    def reducer(h, _):
        r = pool(h, attn, "last") if reduce == "last" else pool(h, mask, "mean")
        norms = torch.where(mask, h.norm(dim=-1), 0.0)
        return r.cpu(), norms.sum().double().cpu(), norms.pow(2).sum().double().cpu()

    with record(model, layers, reduce=reducer) as recorder:
        out = recorder.run(decoder_stack(model), input_ids=batch["input_ids"], attention_mask=attn,
                           position_ids=batch["position_ids"], use_cache=False)
    reduced, norm_sum, norm_sq = (torch.stack(parts) for parts in zip(*out))
    return reduced, norm_sum, norm_sq, int(mask.sum())


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
