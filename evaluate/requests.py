"""lm-evaluation-harness style log-likelihood requests: the request, separate from the model that scores it.

A :class:`LoglikelihoodRequest` is a ``(context, continuation)`` pair; :func:`loglikelihood` returns, for each,
``(sum of log P(continuation tokens | context), whether the continuation is the greedy one)``, like
``lm_eval.models.huggingface.HFLM.loglikelihood``. It runs on the scoring engine's token-level core
(:func:`evaluate.scoring.score_token_groups`): requests whose contexts encode to the same tokens form one
group, so a shared context is encoded once and its KV cache serves all its continuations.

Tokenisation is lm-eval's (``TemplateLM.loglikelihood`` / ``_encode_pair`` / ``HFLM.tok_encode``, 0.4.x), so
both score the same token ids (:func:`encode_request`):

- trailing whitespace of the context is moved to the front of the continuation;
- ``context_ids = encode(context)`` and ``continuation_ids = encode(context + continuation)[len(context_ids):]``,
  with the tokenizer's default special tokens (its BOS, when it adds one), except that a string that already
  starts with the BOS text is encoded without them; the tail is taken even where the tokenizer merges across
  the boundary (the ids scored are then ``context_ids + continuation_ids``, not the joint encoding);
- an empty context becomes ``[BOS]`` (EOS when there is no BOS) with the continuation encoded without special
  tokens; when that continuation already starts with that token, the token itself is the context.

Where this differs from :func:`evaluate.scoring.encode_item` (the encoding of :func:`~evaluate.scoring.score_items`):
``encode_item`` keeps a prompt's trailing whitespace in the prompt (no bundled prompt has any), encodes a
candidate alone when the tokenizer merges across the prompt/candidate boundary, and keeps only the first token
of a ``"letter"`` candidate, whereas a request scores all of the continuation's tokens. lm-eval also
left-truncates a context + continuation longer than the model's maximum length; requests are never truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .scoring import score_token_groups


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``log P(continuation | context)``; ``context`` may be empty, ``continuation`` may not."""

    context: str
    continuation: str


def _prefix_token_id(tokenizer) -> int:
    """lm-eval's ``HFLM.prefix_token_id``: the BOS id, else the EOS id."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _tok_encode(tokenizer, text: str) -> list[int]:
    """lm-eval's ``HFLM.tok_encode`` with ``add_special_tokens=None``: the tokenizer's default special tokens,
    none when ``text`` already starts with the prefix (BOS) token's text."""
    bos = tokenizer.decode(_prefix_token_id(tokenizer))
    kwargs = {"add_special_tokens": False} if text.startswith(bos) else {}
    return list(tokenizer.encode(text, **kwargs))


def encode_request(tokenizer, request: LoglikelihoodRequest) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` exactly as lm-eval's ``HFLM.loglikelihood`` encodes the pair."""
    context, continuation = request.context, request.continuation
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        if not cont:
            raise ValueError(f"request {request!r}: the continuation encodes to no tokens")
        prefix = _prefix_token_id(tokenizer)
        ctx, cont = ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = _tok_encode(tokenizer, context + continuation)
        ctx = _tok_encode(tokenizer, context)
        cont = whole[len(ctx):]
    if not ctx or not cont:
        raise ValueError(f"request {request!r}: encodes to context {ctx} and continuation {cont}; "
                         "expected at least one token in each")
    return ctx, cont


def requests_from_items(items: Sequence) -> list[LoglikelihoodRequest]:
    """One request ``(item.prompt, candidate)`` per candidate of every item, items in order, candidates in order."""
    return [LoglikelihoodRequest(it.prompt, cand) for it in items for cand in it.candidates]


def loglikelihood(model, tokenizer, requests: Sequence[LoglikelihoodRequest], batch_size: int = 16,
                  progress: bool = True, logit_chunk: int = 64) -> list[tuple[float, bool]]:
    """``(summed log-prob of the continuation given the context, is greedy)`` per request, in input order.

    As ``HFLM.loglikelihood``: same encoding (:func:`encode_request`), a forward pass holds at most
    ``batch_size`` continuations (a context shared by more is split over several passes), and the values are
    returned as they are (NaN/inf included).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    encoded = [encode_request(tokenizer, r) for r in requests]
    members: dict[tuple[int, ...], list[int]] = {}
    for k, (ctx, _) in enumerate(encoded):
        members.setdefault(tuple(ctx), []).append(k)
    chunks = [ks[s:s + batch_size] for ks in members.values() for s in range(0, len(ks), batch_size)]
    groups = [(encoded[ks[0]][0], [encoded[k][1] for k in ks]) for ks in chunks]
    scored = score_token_groups(model, tokenizer, groups, batch_size=batch_size, progress=progress,
                                logit_chunk=logit_chunk, batch_by="continuations", desc="loglikelihood")
    out: list = [None] * len(encoded)
    for ks, res in zip(chunks, scored):
        for k, r in zip(ks, res):
            out[k] = (float(r[0]), bool(r[1]))
    return out
