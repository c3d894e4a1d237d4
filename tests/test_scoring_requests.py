"""loglikelihood(requests) equals a plain full forward with log_softmax, encoded as lm-evaluation-harness does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evaluate.requests import LoglikelihoodRequest, encode_request, loglikelihood, requests_from_items
from evaluate.scoring import score_items
from evaluate.tasks import Item
from tiny_models import char_tokenizer, tiny_model, word_bpe_tokenizer

R = LoglikelihoodRequest


@pytest.fixture(scope="module")
def tok():
    return word_bpe_tokenizer()


def lm_eval_encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13's TemplateLM.loglikelihood + _encode_pair + HFLM.tok_encode, transcribed literally."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])

    def tok_encode(s):
        kw = {"add_special_tokens": False} if s.startswith(tokenizer.decode(prefix)) else {}
        return tokenizer.encode(s, **kw)

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole, ctx = tok_encode(context + continuation), tok_encode(context)
    return ctx, whole[len(ctx):]


@torch.inference_mode()
def reference(model, tokenizer, requests) -> list[tuple[float, bool]]:
    """One plain full forward per request, batch 1: sum of log_softmax at the continuation, all-argmax flag."""
    out = []
    for r in requests:
        ctx, cont = lm_eval_encode(tokenizer, r.context, r.continuation)
        lp = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        rows = lp[len(ctx) - 1: len(ctx) - 1 + len(cont)]
        target = torch.tensor(cont)
        out.append((float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
    return out


def _requests():
    """Shared contexts (one with more continuations than the small batch sizes), lengths 1..many tokens,
    a context with a trailing space, an empty context and a boundary the tokenizer merges across (lm-eval then
    scores the joint encoding's tail: here " of spain", "ital" being absorbed into the context's last token)."""
    many = [" paris", " madrid", " the cat sat on the mat", " seoul", " a", " b", " capital of spain"]
    return ([R("the capital of france is", c) for c in many]
            + [R("a cat", " sat"), R("a cat", " sat on the mat"),
               R("question: what is the capital of spain? answer:", " madrid"),
               R("the answer is ", "a"), R("the answer is", " b c d"),
               R("", "the cat sat"), R("the cap", "ital of spain"),
               R("question: what is the capital? answer: the answer is a b c d and", " mat sat")])


def _assert_close(got, want, atol=1e-4):
    assert len(got) == len(want)
    for k, ((g, gg), (w, wg)) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, abs=atol), k
        assert gg == wg, k


@pytest.mark.parametrize("arch", ["gemma3", "llama", "qwen2"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_loglikelihood_equals_full_forward(tok, arch, batch_size):
    model = tiny_model(arch, seed=7)
    requests = _requests()
    _assert_close(loglikelihood(model, tok, requests, batch_size=batch_size, progress=False),
                  reference(model, tok, requests))


def test_batch_size_and_order_independence(tok):
    model = tiny_model("gemma3", seed=8)
    requests = _requests()
    a = loglikelihood(model, tok, requests, batch_size=1, progress=False)
    b = loglikelihood(model, tok, requests[::-1], batch_size=5, progress=False)[::-1]
    c = loglikelihood(model, tok, requests, batch_size=64, progress=False)
    _assert_close(a, b, atol=1e-5)
    _assert_close(a, c, atol=1e-5)


def test_encoding_is_lm_evals(tok):
    for r in _requests():
        assert encode_request(tok, r) == lm_eval_encode(tok, r.context, r.continuation), r
    # the context's trailing space moves to the continuation
    assert encode_request(tok, R("the answer is ", "a")) == encode_request(tok, R("the answer is", " a"))
    # an empty context is the BOS token; the continuation has no special token of its own
    ctx, cont = encode_request(tok, R("", "the cat"))
    assert ctx == [tok.bos_token_id] and cont == tok("the cat", add_special_tokens=False)["input_ids"]
    # the context is encoded with the tokenizer's BOS; a merged boundary keeps the joint encoding's tail
    ctx, cont = encode_request(tok, R("the cap", "ital of spain"))
    assert ctx == tok("the cap")["input_ids"] and ctx[0] == tok.bos_token_id
    assert cont == tok("the capital of spain")["input_ids"][len(ctx):] == tok(" of spain", add_special_tokens=False)[
        "input_ids"]
    with pytest.raises(ValueError, match="continuation"):  # lm-eval asserts: the merge leaves no continuation
        encode_request(tok, R("the cap", "ital"))
    # a context that already starts with the BOS text gets no second BOS
    assert encode_request(tok, R("<bos>the cat", " sat")) == encode_request(tok, R("the cat", " sat"))


def test_greedy_flag():
    """A continuation made of the model's argmax tokens is greedy; changing its last token makes it not."""
    tokenizer, model = char_tokenizer(), tiny_model("llama", seed=9)
    chars = {tokenizer.convert_tokens_to_ids(c): c for c in "abcdefghijklmnopqrstuvwxyz"}
    found = None
    for context in ["the cat", "hello", "a b c", "paris", "seoul is", "madrid", "x y z", "question", "ok", "no"]:
        ids = tokenizer(context)["input_ids"]
        with torch.inference_mode():
            first = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            second = int(model(torch.tensor([ids + [first]])).logits[0, -1].argmax())
        if first in chars and second in chars:
            found = context, chars[first] + chars[second]
            break
    assert found, "no context whose two greedy tokens are letters"
    context, greedy = found
    other = greedy[0] + ("a" if greedy[1] != "a" else "b")
    requests = [R(context, greedy), R(context, greedy[0]), R(context, other)]
    got = loglikelihood(model, tokenizer, requests, batch_size=2, progress=False)
    assert [g for _, g in got] == [True, True, False]
    _assert_close(got, reference(model, tokenizer, requests))


def test_items_score_the_same_both_ways(tok):
    """Where the two encodings agree (no boundary merge, single-token letters), score_items and the requests
    built from the same items give the same log-probs."""
    items = [
        Item("t/0", "t", "en", "the capital of france is", (" paris", " madrid", " the cat sat on the mat"), gold=0),
        Item("t/1", "t", "en", "a cat", (" sat", " sat on the mat", " is"), gold=0),
        Item("t/2", "t", "en", "the answer is", (" a", " b", " c", " d"), gold=2, scoring="letter"),
    ]
    requests = requests_from_items(items)
    assert requests[:3] == [R(items[0].prompt, c) for c in items[0].candidates]
    assert len(requests) == sum(len(it.candidates) for it in items)
    model = tiny_model("qwen2", seed=10)
    flat = [lp for s in score_items(model, tok, items, progress=False) for lp in s.logprob]
    got = [lp for lp, _ in loglikelihood(model, tok, requests, batch_size=4, progress=False)]
    assert got == pytest.approx(flat, abs=1e-5)


def test_bad_requests_are_refused(tok):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="continuation"):
        loglikelihood(model, tok, [R("the cat", "")], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        loglikelihood(model, tok, _requests(), batch_size=0, progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        R("a", "b").context = "c"
    assert loglikelihood(model, tok, [], progress=False) == []
