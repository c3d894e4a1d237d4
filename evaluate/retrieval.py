"""Cross-lingual sentence retrieval: the project's one helper (pooling, precision, hits).

- Pooling (:func:`pooled_representations`): a sentence is the mean of every decoder layer's output
  (``block_output``, :func:`interventions.activations.record` + :func:`interventions.activations.pool`) over its
  non-special tokens: padding and ``<bos>`` are excluded. Gemma's ``<bos>`` state is
  an attention sink whose norm dwarfs the other tokens'; kept in the mean it gives every sentence one shared large
  component, which drives the cosines of all pairs towards 1 and retrieval towards chance.
- Retrieval (:func:`retrieval_hits`, :func:`retrieval_top1`): is sentence i's cosine nearest neighbour among the
  targets its own translation i? Computed in float64 (cosines of vectors that share a large offset differ only
  beyond float32's resolution); ties go to the lowest index.

Used by :mod:`evaluate.analysis`, :mod:`evaluate.experts_eval` and ``benchmarks/check_adapters.py``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from interventions.activations import sentence_representations
from interventions.steer import steer


def retrieval_hits(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., n]``: is row i of ``source``'s most cosine-similar row of ``target`` row i (parallel rows)?

    ``source`` and ``target`` are ``[..., n, d]`` of one shape (e.g. ``[layers, n, hidden]``); float64 throughout.
    """
    if source.dim() < 2 or source.shape != target.shape:
        raise ValueError(f"src, tgt: expected two Tensor[..., n, d] of one shape, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    s = torch.nn.functional.normalize(source.double(), dim=-1)
    t = torch.nn.functional.normalize(target.double(), dim=-1)
    nearest = (s @ t.transpose(-1, -2)).argmax(-1)
    return nearest == torch.arange(source.shape[-2], device=nearest.device)


def retrieval_top1(src: torch.Tensor, tgt: torch.Tensor) -> float:
    """Share of rows i of ``src`` (``[n, d]``) whose most cosine-similar row of ``tgt`` is row i."""
    if src.dim() != 2 or src.shape != tgt.shape:
        raise ValueError(f"src, tgt: expected two Tensor[n, d] of one shape, got {tuple(src.shape)} and "
                         f"{tuple(tgt.shape)}")
    return float(retrieval_hits(src, tgt).double().mean())


def steering(model, config):
    """``interventions.steer.steer(model, config)``, or nothing for ``None`` / an empty config."""
    if config is None or not config.interventions:
        return contextlib.nullcontext()
    return steer(model, config)


def pooled_representations(model, tokenizer, texts: Sequence[str], config=None, batch_size: int = 16,
                           max_length: int = 128) -> torch.Tensor:
    """Mean over non-special tokens (no ``<bos>``, no padding) of every layer's ``block_output``, with ``config``
    forced while encoding -> float32 ``[layers, n, hidden]`` in the order of ``texts``. Recorded and pooled by
    :func:`interventions.activations.sentence_representations` (the one recorder and the one pooling)."""
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # similar lengths together: less padding
    with steering(model, config):
        reps = sentence_representations(model, tokenizer, [texts[i] for i in order], batch_size=batch_size,
                                        progress=False, exclude_special=True, max_length=max_length)
    return reps[:, torch.argsort(torch.tensor(order))]
