"""The scoring engine: log P(candidate | prompt) for every candidate of every item, batched.

One scorer serves every task. For each batch of items it

1. encodes every prompt once (left padding, explicit ``position_ids``, ``use_cache=True``) through the
   *inner* decoder (``model.model`` / ``model.transformer``), and applies the LM head only to the last
   prompt position: that row gives the log-probability of every candidate's first token (and is all a
   ``"letter"`` item needs);
2. expands the prompts' KV cache to one row per multi-token candidate and runs the candidates' remaining
   tokens in one right-padded batch on top of it, again applying the LM head only to the real candidate
   positions (in chunks, so at most ``logit_chunk`` rows of gemma-3's 262k-vocabulary logits exist at once).

So a shared prompt is encoded once, and full-vocabulary logits exist only where a token is scored. That
token-level core is :func:`score_token_groups` (groups of ``(context ids, [continuation ids, ...])`` ->
``(summed log-prob, is greedy)`` per continuation); :func:`score_items` (items, encoded by
:func:`encode_item`) and :func:`evaluate.requests.loglikelihood` (lm-evaluation-harness style
``(context, continuation)`` requests, encoded exactly as lm-eval's ``HFLM`` does) both run on it. The
steering hooks of ``interventions.steer`` live on decoder-layer modules, which the inner decoder calls, and
a PEFT model is seen through to its base model, whose LoRA layers stay active. Under ``steer`` the
candidate pass extends a KV cache, so position modes see it as *generated* tokens: ``positions="all"``
scores exactly like the naive loop (tested); ``"prompt"``/``"last"`` steer the prompt (its last token) and
not the candidate tokens, as in generation, whereas a naive full-sequence forward would also steer them.

:func:`naive_score_items` is the reference: one full-logit forward per option, batch 1, through the model's
own ``forward``. Tests check the engine against it; ``benchmarks/bench_scoring.py`` times both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from interventions.components import unwrap

NORMALIZATIONS = ("sum", "mean")


class NonFiniteScores(ValueError):
    """A candidate's log-probability is NaN or infinite: the forward pass overflowed, so no choice exists.

    Raised instead of an :class:`ItemScore` (an argmax over NaN would silently pick candidate 0).
    """

    def __init__(self, item_id: str, language: str | None, context: str | None = None):
        self.item_id, self.language, self.context = item_id, language, context
        where = context or "the model as called"
        super().__init__(f"item {item_id} ({language}): non-finite log-probabilities under {where}; the steering "
                         "strength or vector overflows the model's dtype")

    def __reduce__(self):  # picklable (e.g. gathered across processes) with its own arguments
        return type(self), (self.item_id, self.language, self.context)


@dataclass(frozen=True)
class ItemScore:
    """Scores of one item: per-candidate summed log-prob, token counts, and the chosen index."""

    item_id: str
    logprob: tuple[float, ...]  # sum over the candidate's tokens of log P(token | prefix)
    n_tokens: tuple[int, ...]
    choice: int  # argmax under the item's rule (letter / cloze-sum / cloze-mean)
    choice_sum: int  # argmax of the summed log-prob
    choice_mean: int  # argmax of the mean log-prob per token (length-normalised)
    scoring: str = "cloze"
    normalization: str = "sum"

    @property
    def mean_logprob(self) -> tuple[float, ...]:
        return tuple(lp / max(n, 1) for lp, n in zip(self.logprob, self.n_tokens))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_logprob"] = list(self.mean_logprob)
        d["logprob"], d["n_tokens"] = list(self.logprob), list(self.n_tokens)
        return d


# --------------------------------------------------------------------------------------- tokenisation
def _ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_item(tokenizer, item) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``item.prompt`` (with BOS when the tokenizer adds one) and of each candidate.

    A candidate's tokens are ``tokenize(prompt + candidate)`` minus the prompt's tokens when the prompt's
    tokens are a prefix of it; when the tokenizer merges across the boundary they are not, and the candidate
    is tokenised alone (without special tokens). ``"letter"`` items keep only each candidate's first token.
    """
    if not item.candidates:
        raise ValueError(f"item {item.id!r}: field 'candidates' is empty; expected at least one candidate")
    prompt_ids = _ids(tokenizer, item.prompt, True)
    if not prompt_ids:
        raise ValueError(f"item {item.id!r}: field 'prompt' encodes to no tokens and the tokenizer adds no BOS; "
                         "expected a non-empty prompt")
    n = len(prompt_ids)
    cands: list[list[int]] = []
    for j, cand in enumerate(item.candidates):
        full = _ids(tokenizer, item.prompt + cand, True)
        ids = full[n:] if (len(full) > n and full[:n] == prompt_ids) else _ids(tokenizer, cand, False)
        if not ids:
            raise ValueError(f"item {item.id!r}: candidates[{j}]={cand!r} encodes to no tokens")
        cands.append(ids[:1] if item.scoring == "letter" else ids)
    if item.scoring == "letter" and len({c[0] for c in cands}) < len(cands):
        raise ValueError(f"item {item.id!r}: scoring='letter' but candidates {item.candidates!r} do not start with "
                         "distinct tokens; expected one distinct token per option (e.g. ' A', ' B')")
    if item.scoring not in ("letter", "cloze"):
        raise ValueError(f"item {item.id!r}: field 'scoring' is {item.scoring!r}; expected 'cloze' or 'letter'")
    return prompt_ids, cands


def _normalization(item, override: str | None) -> str:
    if item.scoring == "letter":
        return "sum"
    if override is not None:
        norm = override
    else:
        meta = item.meta or {}
        norm = meta.get("normalization")
        if norm is None:
            ln = meta.get("length_normalized", meta.get("length_normalised"))
            norm = "mean" if ln else "sum"
    if norm not in NORMALIZATIONS:
        raise ValueError(f"item {item.id!r}: normalization {norm!r}; expected one of {NORMALIZATIONS}")
    return norm


def _argmax(values: Sequence[float]) -> int:
    return int(max(range(len(values)), key=lambda j: (values[j], -j)))  # first index on ties


def _make_score(item, logprob: list[float], n_tokens: list[int], normalization: str | None,
                context: str | None = None) -> ItemScore:
    if not all(math.isfinite(lp) for lp in logprob):
        raise NonFiniteScores(item.id, getattr(item, "language", None), context)
    norm = _normalization(item, normalization)
    c_sum = _argmax(logprob)
    c_mean = _argmax([lp / n for lp, n in zip(logprob, n_tokens)])
    return ItemScore(item_id=item.id, logprob=tuple(float(x) for x in logprob), n_tokens=tuple(n_tokens),
                     choice=c_mean if norm == "mean" else c_sum, choice_sum=c_sum, choice_mean=c_mean,
                     scoring=item.scoring, normalization=norm)


# ------------------------------------------------------------------------------------- model surgery
def split_model(model):
    """(inner decoder, lm_head, logit post-processing) of a causal LM, seeing through PEFT wrappers."""
    lm = unwrap(model)
    prefix = getattr(lm, "base_model_prefix", "")
    inner = getattr(lm, prefix, None) if prefix else None
    if inner is None and hasattr(lm, "get_decoder"):
        inner = lm.get_decoder()
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if inner is None or head is None or inner is lm:
        raise ValueError(f"model: {type(lm).__name__} is not a causal LM with an inner decoder and an output "
                         "embedding (lm_head); expected e.g. Gemma3ForCausalLM, LlamaForCausalLM or a PeftModel")
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None) or None  # Cohere
    divide = getattr(cfg, "logits_scaling", None) or None  # Granite

    def post(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return inner, head, post


def _cache_kwarg(inner) -> str:
    """transformers >= 5.2x calls the KV cache argument ``cache``; older releases ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------ engine
Group = tuple[list[int], list[list[int]]]  # (context token ids, [continuation token ids, ...])


@torch.inference_mode()
def _score_batch(inner, head, post, pad_id: int, device, batch: list[Group],
                 logit_chunk: int) -> list[list[tuple[float, bool]]]:
    """(summed log-prob, every token is the argmax) of each continuation of each group in ``batch``."""
    B = len(batch)
    lens = torch.tensor([len(p) for p, _ in batch])
    P = int(lens.max())
    input_ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, (p, _) in enumerate(batch):
        input_ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    need_cache = any(len(c) > 1 for _, cands in batch for c in cands)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    out = inner(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=need_cache)
    last = post(head(out.last_hidden_state[:, -1, :])).float().log_softmax(-1)  # [B, V]
    top = last.argmax(-1).tolist()
    scores = [[float(last[b, c[0]]) for c in cands] for b, (_, cands) in enumerate(batch)]
    greedy = [[top[b] == c[0] for c in cands] for b, (_, cands) in enumerate(batch)]
    if not need_cache:
        return [list(zip(s, g)) for s, g in zip(scores, greedy)]

    rows = [(b, j, c) for b, (_, cands) in enumerate(batch) for j, c in enumerate(cands) if len(c) > 1]
    L = max(len(c) - 1 for _, _, c in rows)
    R = len(rows)
    cont = torch.full((R, L), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((R, L), dtype=torch.long)
    targets = torch.zeros((R, L), dtype=torch.long)
    for r, (_, _, c) in enumerate(rows):  # right padding: real tokens never attend to the pads after them
        cont[r, : len(c) - 1] = torch.tensor(c[:-1])
        targets[r, : len(c) - 1] = torch.tensor(c[1:])
        cont_mask[r, : len(c) - 1] = 1
    index = torch.tensor([b for b, _, _ in rows], device=device)
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else out.past_key_values
    cache.batch_select_indices(index)  # one cache row per candidate (index_select, so rows are copies)
    full_mask = torch.cat([mask[index], cont_mask.to(device)], dim=1)
    cont_pos = lens.to(device)[index, None] + torch.arange(L, device=device)[None, :]
    hidden = inner(input_ids=cont.to(device), attention_mask=full_mask, position_ids=cont_pos,
                   use_cache=True, **{_cache_kwarg(inner): cache}).last_hidden_state  # [R, L, H]
    where = cont_mask.bool()
    h = hidden[where.to(device)]  # [T, H], row-major over (r, t)
    tgt = targets[where].to(device)
    row_of = torch.arange(R)[:, None].expand(R, L)[where].to(device)
    sums = torch.zeros(R, dtype=torch.float64, device=device)
    misses = torch.zeros(R, dtype=torch.long, device=device)  # scored tokens that are not the argmax
    for s in range(0, h.shape[0], logit_chunk):
        lp = post(head(h[s:s + logit_chunk])).float().log_softmax(-1)
        t = tgt[s:s + logit_chunk]
        sums.index_add_(0, row_of[s:s + logit_chunk], lp.gather(-1, t[:, None])[:, 0].double())
        misses.index_add_(0, row_of[s:s + logit_chunk], (lp.argmax(-1) != t).long())
    for r, (b, j, _) in enumerate(rows):
        scores[b][j] += float(sums[r])
        greedy[b][j] = greedy[b][j] and int(misses[r]) == 0
    return [list(zip(s, g)) for s, g in zip(scores, greedy)]


def _pack(order: list[int], sizes: Sequence[int], batch_size: int, by: str) -> list[list[int]]:
    """Consecutive batches of ``order``: ``batch_size`` groups each (``by="contexts"``), or as many groups as fit
    in ``batch_size`` continuations (``by="continuations"``; a larger group forms a batch alone)."""
    if by == "contexts":
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    used = batch_size
    for i in order:
        if used + sizes[i] > batch_size:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += sizes[i]
    return batches


def score_token_groups(model, tokenizer, groups: Sequence[Group], batch_size: int = 16, progress: bool = True,
                       logit_chunk: int = 64, batch_by: str = "contexts", desc: str = "scoring"
                       ) -> list[list[tuple[float, bool]]]:
    """The engine: for every group ``(context ids, [continuation ids, ...])``, per continuation the summed
    ``log P(continuation | context)`` and whether each of its tokens is the argmax (the greedy continuation).

    Each context is encoded once, its KV cache shared by its continuations. A batch holds ``batch_size``
    contexts (``batch_by="contexts"``) or at most ``batch_size`` continuations (``"continuations"``); groups run
    longest context first (similar lengths batch together, the largest batch runs first). Results are in input
    order; non-finite values are returned as they are.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if batch_by not in ("contexts", "continuations"):
        raise ValueError(f"batch_by: expected 'contexts' or 'continuations', got {batch_by!r}")
    for k, (ctx, conts) in enumerate(groups):
        if not ctx or not conts or not all(conts):
            raise ValueError(f"groups[{k}]: expected a non-empty context and non-empty continuations")
    if not groups:
        return []
    inner, head, post = split_model(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    order = sorted(range(len(groups)), key=lambda i: (-len(groups[i][0]), i))
    batches = _pack(order, [len(c) for _, c in groups], batch_size, batch_by)
    results: list = [None] * len(groups)
    for idx in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        for i, res in zip(idx, _score_batch(inner, head, post, pad_id, device, [groups[i] for i in idx],
                                            logit_chunk)):
            results[i] = res
    return results


def score_items(model, tokenizer, items: Sequence, batch_size: int = 16, progress: bool = True,
                normalization: str | None = None, logit_chunk: int = 64, context: str | None = None
                ) -> list[ItemScore]:
    """Score every candidate of every item; returns one :class:`ItemScore` per item, in input order.

    ``normalization`` overrides the cloze rule for all items (``"sum"`` or ``"mean"``); by default an item's
    ``meta["normalization"]`` (or ``meta["length_normalized"]``) decides, else ``"sum"``. Letter items
    always choose the candidate whose (first) token has the highest next-token log-prob after the prompt.
    A NaN or infinite log-probability raises :class:`NonFiniteScores` (``context``, e.g. the variant, is named
    in its message); no score is returned for a model whose forward pass overflowed. ``batch_size`` counts
    items (prompts) per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {NORMALIZATIONS} or None, got {normalization!r}")
    items = list(items)
    if not items:
        return []
    encoded = [encode_item(tokenizer, it) for it in items]
    scored = score_token_groups(model, tokenizer, encoded, batch_size=batch_size, progress=progress,
                                logit_chunk=logit_chunk)
    return [_make_score(it, [lp for lp, _ in res], [len(c) for c in enc[1]], normalization, context)
            for it, enc, res in zip(items, encoded, scored)]


@torch.inference_mode()
def naive_score_items(model, tokenizer, items: Sequence, progress: bool = True,
                      normalization: str | None = None, context: str | None = None) -> list[ItemScore]:
    """Reference scorer: one full-logit ``model(...)`` forward per option at batch size 1 (slow, simple).

    Refuses non-finite log-probabilities like :func:`score_items`."""
    device = _device(model)
    results = []
    for item in tqdm(list(items), desc="naive scoring", unit="item", disable=not progress):
        prompt_ids, cands = encode_item(tokenizer, item)
        logprob = []
        for c in cands:
            ids = torch.tensor([prompt_ids + c], device=device)
            lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            n = len(prompt_ids)
            logprob.append(float(sum(lp[n - 1 + t, tok] for t, tok in enumerate(c))))
        results.append(_make_score(item, logprob, [len(c) for c in cands], normalization, context))
    return results
