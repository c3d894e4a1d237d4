"""The batched scorer equals the naive full-logit loop, on tiny models of several families and on gemma."""

from __future__ import annotations

import pickle

import pytest
import torch

from evaluate.scoring import ItemScore, NonFiniteScores, encode_item, naive_score_items, score_items
from evaluate.tasks import Item
from interventions import steer
from tiny_models import tiny_lora, tiny_model, word_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The 107-token BPE tokenizer of tiny_models (fits the tiny models' vocab of 128)."""
    return word_bpe_tokenizer()


def _items():
    """Prompts of different lengths, candidates of 1..several tokens, letter and cloze items mixed."""
    return [
        Item("t/0", "t", "en", "the capital of france is", (" paris", " madrid", " the cat sat on the mat"), gold=0),
        Item("t/1", "t", "en", "a cat", (" sat", " sat on the mat", " is"), gold=0),
        Item("t/2", "t", "en", "question: what is the capital of spain? answer:", (" madrid", " paris"), gold=0),
        Item("t/3", "t", "en", "the answer is", (" a", " b", " c", " d"), gold=2, scoring="letter"),
        Item("t/4", "t", "en", "korea", (" seoul", " beijing china korea"), local=0, us=1),
        Item("t/5", "t", "en", "the", (" capital of spain is madrid", " cat"), gold=1,
             meta={"normalization": "mean"}),
        Item("t/6", "t", "en", "question: what is the capital? answer: the answer is a b c d and",
             (" a", " mat sat"), gold=0),
    ]


def _assert_same(fast: list[ItemScore], slow: list[ItemScore], atol=1e-4):
    assert [s.item_id for s in fast] == [s.item_id for s in slow]
    for f, s in zip(fast, slow):
        assert f.n_tokens == s.n_tokens
        assert f.logprob == pytest.approx(s.logprob, abs=atol), f.item_id
        assert (f.choice, f.choice_sum, f.choice_mean) == (s.choice, s.choice_sum, s.choice_mean), f.item_id


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gemma2", "gpt2", "qwen3"])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_engine_equals_naive_full_logits(tok, arch, batch_size):
    model = tiny_model(arch, seed=1)
    items = _items()
    _assert_same(score_items(model, tok, items, batch_size=batch_size, progress=False),
                 naive_score_items(model, tok, items, progress=False))


def test_engine_equals_naive_through_peft(tok):
    model = tiny_lora(tiny_model("llama", seed=2), "llama")
    items = _items()
    fast = score_items(model, tok, items, batch_size=4, progress=False)
    _assert_same(fast, naive_score_items(model, tok, items, progress=False))
    base = score_items(model.get_base_model(), tok, items, progress=False)  # LoRA layers stay active
    with model.disable_adapter():
        plain = score_items(model, tok, items, progress=False)
    assert base[0].logprob == pytest.approx(fast[0].logprob, abs=1e-5)
    assert plain[0].logprob != pytest.approx(fast[0].logprob, abs=1e-3)


def test_letter_scores_are_next_token_log_probabilities(tok):
    """A letter item's scores are log_softmax of the full next-token logits after the prompt."""
    model = tiny_model("llama", seed=3)
    item = Item("n/0", "t", "en", "the answer is", (" a", " b", " c", " d"), gold=0, scoring="letter")
    (s,) = score_items(model, tok, [item], progress=False)
    prompt_ids, cands = encode_item(tok, item)
    expected = model(torch.tensor([prompt_ids])).logits[0, -1].log_softmax(-1)[[c[0] for c in cands]]
    assert s.logprob == pytest.approx(expected.tolist(), abs=1e-5)
    assert s.choice == int(expected.argmax())


def test_boundary_merge_falls_back_to_candidate_alone(tok):
    item = Item("m/0", "t", "en", "the cap", ("ital", " is"))
    prompt_ids, cands = encode_item(tok, item)
    assert prompt_ids == tok("the cap")["input_ids"]
    assert tok("the capital")["input_ids"][: len(prompt_ids)] != prompt_ids  # the tokenizer merges "cap"+"ital"
    assert cands[0] == tok("ital", add_special_tokens=False)["input_ids"]
    assert cands[1] == tok("the cap is")["input_ids"][len(prompt_ids):]
    model = tiny_model("llama")
    _assert_same(score_items(model, tok, [item], progress=False), naive_score_items(model, tok, [item], progress=False))


def test_choice_rules(tok):
    s = score_items(tiny_model("llama"), tok, _items(), progress=False)
    by = {x.item_id: x for x in s}
    assert by["t/5"].normalization == "mean" and by["t/5"].choice == by["t/5"].choice_mean
    assert by["t/0"].normalization == "sum" and by["t/0"].choice == by["t/0"].choice_sum
    assert by["t/3"].n_tokens == (1, 1, 1, 1)
    assert all(x.choice_mean == max(range(len(x.logprob)), key=lambda j: x.mean_logprob[j]) for x in s)
    forced = score_items(tiny_model("llama"), tok, _items(), progress=False, normalization="mean")
    assert all(x.choice == x.choice_mean for x in forced)
    assert set(s[0].to_dict()) >= {"item_id", "logprob", "n_tokens", "choice", "mean_logprob"}


def test_order_and_batch_invariance(tok):
    model = tiny_model("gemma3", seed=4)
    items = _items()
    a = score_items(model, tok, items, batch_size=1, progress=False)
    b = score_items(model, tok, list(reversed(items)), batch_size=5, progress=False)[::-1]
    _assert_same(a, b, atol=1e-5)


def test_bad_input_is_refused(tok):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="candidates"):
        score_items(model, tok, [Item("b/0", "t", "en", "the", ())], progress=False)
    with pytest.raises(ValueError, match="scoring"):
        score_items(model, tok, [Item("b/1", "t", "en", "the", (" a",), scoring="bogus")], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        score_items(model, tok, [Item("b/2", "t", "en", "the", (" cat", " cat sat"), scoring="letter")],
                    progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        score_items(model, tok, _items(), batch_size=0, progress=False)
    assert score_items(model, tok, [], progress=False) == []


@pytest.mark.gemma
@pytest.mark.slow
def test_gemma_engine_matches_naive(gemma):
    model, tokenizer = gemma
    items = [
        Item("g/0", "t", "en", "The capital of France is", (" Paris", " Madrid", " the city of Lyon"), gold=0),
        Item("g/1", "t", "ko", "대한민국의 수도는", (" 서울", " 워싱턴 D.C."), local=0, us=1),
        Item("g/2", "t", "zh", "中国的首都是", ("北京", "华盛顿"), local=0, us=1),
        Item("g/3", "t", "en", "Question: 2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:", (" A", " B", " C", " D"),
             gold=1, scoring="letter"),
    ]
    fast = score_items(model, tokenizer, items, batch_size=4, progress=False)
    _assert_same(fast, naive_score_items(model, tokenizer, items, progress=False), atol=2e-3)
    assert fast[0].choice == 0 and fast[1].choice == 0


def test_engine_equals_naive_under_steering(tok):
    """With `steer` hooks on the decoder layers (positions='all'), the engine still equals the naive loop."""
    from interventions.config import AdditiveIntervention, InterventionConfig

    model = tiny_model("llama", seed=6)
    torch.manual_seed(0)
    iv = AdditiveIntervention("push", "block_output", 1, torch.randn(32) * 3.0, coefficient=1.0, positions="all")
    config = InterventionConfig.for_model(model, [iv])
    items = _items()
    plain = score_items(model, tok, items, progress=False)
    with steer(model, config):
        fast = score_items(model, tok, items, batch_size=3, progress=False)
        slow = naive_score_items(model, tok, items, progress=False)
    _assert_same(fast, slow)
    assert fast[0].logprob != pytest.approx(plain[0].logprob, abs=1e-3)  # the steering did change the scores
    after = score_items(model, tok, items, progress=False)
    _assert_same(after, plain, atol=1e-6)  # and every hook is gone afterwards


def _poison(model, value: float):
    """A forward hook that multiplies layer 1's output by ``value`` (nan / inf: an overflowed residual)."""
    layer = model.model.layers[1]

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] * value, *output[1:])
        return output * value
    return layer.register_forward_hook(hook)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_log_probs_are_refused_not_scored(tok, value):
    """All-NaN logits must not become 'candidate 0 chosen': both scorers raise, naming the item and context."""
    model = tiny_model("llama", seed=7)
    items = _items()
    handle = _poison(model, value)
    try:
        for scorer in (lambda: score_items(model, tok, items, batch_size=3, progress=False, context="variant 'x'"),
                       lambda: naive_score_items(model, tok, items, progress=False, context="variant 'x'")):
            with pytest.raises(NonFiniteScores) as err:
                scorer()
            message = str(err.value)
            assert err.value.item_id in {it.id for it in items} and "(en)" in message
            assert "non-finite log-probabilities under variant 'x'" in message and "overflows" in message
        letter = [it for it in items if it.scoring == "letter"]  # the first-token path alone (no KV cache)
        with pytest.raises(NonFiniteScores, match="item t/3"):
            score_items(model, tok, letter, progress=False)
    finally:
        handle.remove()
    assert all(len(s.logprob) for s in score_items(model, tok, items, progress=False))  # hook gone: scores again
    copy = pickle.loads(pickle.dumps(NonFiniteScores("a/ko/1", "ko", "variant 'cla+en'")))
    assert isinstance(copy, ValueError) and "item a/ko/1 (ko)" in str(copy) and copy.context == "variant 'cla+en'"
