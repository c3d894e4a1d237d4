"""Activation collection and estimators: exact checks on tiny models, one smoke test on gemma-3-270m."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from evaluate import contrasts as C
from interventions import vectors as V
from tiny_models import char_tokenizer, tiny_lora, tiny_model

ARCHS = ["gemma3", "llama", "qwen2", "gpt2", "gpt_neox"]


TEXTS = ["Hello there.", "A much longer sentence with many characters in it!", "Hi", "Steering 42",
         "The cat sat on the mat.", "x"]


def stacked(model, tok, texts, reduce):
    """Reference: each text alone (no padding), hidden states read from output_hidden_states[l + 1]."""
    out = []
    for text in texts:
        enc = tok([text], return_tensors="pt", return_special_tokens_mask=True)
        with torch.no_grad():
            hs = model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states
        keep = ~enc["special_tokens_mask"][0].bool()
        per_layer = []
        for l in range(len(hs) - 2):  # the last entry is normed for some models: compare layers < L-1
            h = hs[l + 1][0]
            per_layer.append(h[-1] if reduce == "last" else h[keep].mean(0))
        out.append(torch.stack(per_layer))
    return torch.stack(out, 1)  # [L-1, n, H]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_left_padded_batch_equals_per_example(arch, reduce):
    model, tok = tiny_model(arch), char_tokenizer()
    reps = V.sentence_representations(model, tok, TEXTS, pooling=reduce, batch_size=4, progress=False)
    ref = stacked(model, tok, TEXTS, reduce)
    assert reps.shape == (4, len(TEXTS), 32)
    torch.testing.assert_close(reps[:-1], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_running_sums_equal_stacked_computation(reduce):
    model, tok = tiny_model("llama"), char_tokenizer()
    stats = V.collect_activations(model, tok, TEXTS, reduce=reduce, batch_size=4, progress=False)
    reps = V.sentence_representations(model, tok, TEXTS, pooling=reduce, batch_size=len(TEXTS), progress=False)
    assert stats.count == len(TEXTS) and stats.layers == [0, 1, 2, 3]
    torch.testing.assert_close(stats.mean, reps.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.example_norms, reps.norm(dim=-1).mean(1), atol=1e-5, rtol=1e-5)
    # token-level residual norms: every real non-special token of every text
    norms = []
    for text in TEXTS:
        enc = tok([text], return_tensors="pt", return_special_tokens_mask=True)
        with torch.no_grad():
            hs = model(input_ids=enc["input_ids"], output_hidden_states=True).hidden_states
        keep = ~enc["special_tokens_mask"][0].bool()
        norms.append(torch.stack([hs[l + 1][0][keep].norm(dim=-1) for l in range(3)]))
    ref = torch.cat(norms, 1).mean(1)
    torch.testing.assert_close(stats.residual_norms[:3], ref, atol=1e-4, rtol=1e-5)


class LiveTensorBytes(TorchDispatchMode):
    """Every tensor any torch op creates while the mode is on is tracked by a weak reference; :meth:`sample`
    records the bytes of the storages still alive. A forward pre-hook on decoder layer 0 samples at the start of
    every batch, so ``peak`` includes whatever a collector holds from earlier batches (bytes, not time: robust
    on a loaded machine)."""

    def __init__(self):
        super().__init__()
        self.refs: list[weakref.ref] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.refs += [weakref.ref(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def sample(self, *_):
        alive = [t for t in (r() for r in self.refs) if t is not None]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}
        self.peak = max(self.peak, sum(storages.values()))


def peak_live_bytes(model, collect) -> int:
    """Peak bytes of the tensors created by ``collect()`` that are alive at a batch start or after it returns
    (while its result is still referenced)."""
    meter = LiveTensorBytes()
    handle = V.decoder_layers(model)[0].register_forward_pre_hook(meter.sample)
    try:
        with meter:
            result = collect()
            meter.sample()
    finally:
        handle.remove()
    del result
    return meter.peak


def test_running_sums_hold_memory_independent_of_n():
    """collect_activations / collect_paired keep running sums: their peak live tensor bytes for 8n texts equal
    those for n (identical batches), while sentence_representations, which keeps every example, grows by at least
    the 7n examples' bytes: the meter sees retention, so a collector that kept every example would fail here."""
    model, tok = tiny_model("qwen2"), char_tokenizer()
    batch, n = 4, 8
    texts = lambda k: TEXTS[:batch] * (k // batch)  # every batch the same four texts: the same transient memory
    per_example = 4 * 32 * 4  # [layers, hidden] float32: what keeping one example costs
    linear = 7 * n * per_example

    def growth(collect):
        small, big = peak_live_bytes(model, lambda: collect(texts(n))), peak_live_bytes(model, lambda: collect(texts(8 * n)))
        return big - small

    kept = growth(lambda t: V.sentence_representations(model, tok, t, pooling="last", batch_size=batch,
                                                        progress=False))
    assert kept >= linear, kept  # the control: per-example retention is measured
    single = growth(lambda t: V.collect_activations(model, tok, t, batch_size=batch, progress=False))
    paired = growth(lambda t: V.collect_paired(model, tok, t, t[::-1], batch_size=batch, progress=False))
    assert single < linear / 20 and paired < linear / 20, (single, paired, linear)


def test_hooks_removed_and_model_unchanged():
    model, tok = tiny_model("gemma3"), char_tokenizer()
    layers = V.decoder_layers(model)
    enc = tok(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
    V.collect_paired(model, tok, TEXTS[:2], TEXTS[2:4], progress=False)
    V.sentence_representations(model, tok, TEXTS, layers=[1], progress=False)  # stops early via exception
    assert all(not m._forward_hooks for m in layers)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, before)


def test_layer_subset_and_peft_wrapper():
    model, tok = tiny_model("llama"), char_tokenizer()
    full = V.sentence_representations(model, tok, TEXTS, progress=False)
    sub = V.sentence_representations(model, tok, TEXTS, layers=[2, 0], progress=False)
    torch.testing.assert_close(sub, full[[2, 0]])
    lora = tiny_lora(tiny_model("llama"), "llama")
    reps = V.sentence_representations(lora, tok, TEXTS, progress=False)
    assert reps.shape == full.shape and not torch.allclose(reps, full)
    with pytest.raises(ValueError, match="layers"):
        V.sentence_representations(model, tok, TEXTS, layers=[7], progress=False)


def test_mean_difference_and_pca_on_paired_stats():
    model, tok = tiny_model("llama"), char_tokenizer()
    pos_texts = [t + " yes yes" for t in TEXTS]
    neg_texts = [t + " no" for t in TEXTS]
    paired = V.collect_paired(model, tok, pos_texts, neg_texts, reduce="last", batch_size=4, progress=False)
    p = V.sentence_representations(model, tok, pos_texts, pooling="last", progress=False).double()
    n = V.sentence_representations(model, tok, neg_texts, pooling="last", progress=False).double()
    d = p - n  # [L, N, H]
    md = V.mean_difference(paired.positive, paired.negative)
    torch.testing.assert_close(md.double(), d.mean(1), atol=1e-5, rtol=1e-5)
    comp = V.pca(paired, scale="unit").double()
    for l in range(4):
        centred = d[l] - d[l].mean(0)
        ref = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        assert abs(float(comp[l] @ ref)) == pytest.approx(1.0, abs=1e-4)
        assert float(comp[l] @ d[l].mean(0)) >= 0  # sign-aligned with the mean difference
    scaled = V.pca(paired)
    torch.testing.assert_close(scaled.norm(dim=-1), md.norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_pca_sign_alignment_constructed():
    # differences spread along e0 with a mean pointing to -e0: the component must point to -e0
    L, H, n = 1, 5, 50
    torch.manual_seed(0)
    d = torch.zeros(n, H, dtype=torch.float64)
    d[:, 0] = torch.randn(n, dtype=torch.float64) * 10 - 1.0
    d[:, 1] = torch.randn(n, dtype=torch.float64) * 0.1
    stats = V.ActivationStats.empty([0], H, "last")
    paired = V.PairedStats(stats, stats, d.sum(0, keepdim=True), (d.T @ d)[None], n)
    comp = V.pca(paired, scale="unit")[0]
    assert comp[0] < -0.99
    with pytest.raises(ValueError, match="2 pairs"):
        V.pca(V.PairedStats(stats, stats, d[:1], (d[:1].T @ d[:1])[None], 1))


def test_bad_input():
    model, tok = tiny_model("llama"), char_tokenizer()
    with pytest.raises(ValueError, match="reduce"):
        V.collect_activations(model, tok, TEXTS, reduce="max", progress=False)
    with pytest.raises(ValueError, match="equal length"):
        V.collect_paired(model, tok, TEXTS, TEXTS[:2], progress=False)
    with pytest.raises(ValueError, match="texts"):
        V.collect_activations(model, tok, [], progress=False)


class _Item:
    def __init__(self, id, prompt, cue, group=""):
        self.id, self.prompt, self.cue, self.group = id, prompt, cue, group


def test_cue_pairs_match_twins():
    explicit = [_Item("blend/ko/q1/explicit", "In Korea, q1?", "explicit"),
                _Item("blend/ko/q2/explicit", "In Korea, q2?", "explicit"),
                _Item("blend/ko/q3/explicit", "In Korea, q3?", "explicit")]
    implicit = [_Item("blend/ko/q2/implicit", "q2?", "implicit"), _Item("blend/ko/q1/implicit", "q1?", "implicit")]
    pos, neg, keys = C.cue_pairs(explicit, implicit)
    assert pos == ["In Korea, q1?", "In Korea, q2?"] and neg == ["q1?", "q2?"]
    assert keys == ["blend/ko/q1", "blend/ko/q2"]


def test_steering_vector_alpha_in_the_vectors_own_units():
    """alpha = 1 adds exactly the mean difference (mean_difference vectors: coefficient == alpha)."""
    sv = V.SteeringVectors("en_transfer_ko", torch.ones(4, 32), [0, 1, 2, 3], torch.full((4,), 10.0),
                           {"method": "mean_difference"})
    assert torch.equal(sv.alpha_scale, torch.ones(4))
    inter = sv.intervention(2, alpha=0.5)
    assert inter.layer == 2 and inter.component == "block_output" and inter.coefficient == 0.5
    assert inter.positions == "all"  # vectors built without positions steer every position
    assert inter.source["alpha"] == 0.5 and inter.source["coefficient"] == 0.5 and inter.source["alpha_scale"] == 1.0
    assert "mean difference" in inter.source["alpha_definition"]
    assert sv.intervention(1, coefficient=2.0).source["alpha"] == 2.0  # an absolute coefficient is also in alpha
    assert sv.intervention(1, alpha=0).coefficient == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        sv.intervention(2)
    with pytest.raises(ValueError, match="alpha: expected a finite number"):
        sv.intervention(2, alpha=float("inf"))
    unknown = V.SteeringVectors("probe", torch.ones(4, 32), [0, 1, 2, 3], torch.ones(4), {"method": "probe"})
    with pytest.raises(ValueError, match="alpha: undefined"):
        unknown.intervention(1, alpha=1.0)
    assert unknown.intervention(1, coefficient=3.0).source["alpha"] is None
    with pytest.raises(ValueError, match="positions"):
        V.SteeringVectors("v", torch.ones(4, 32), [0, 1, 2, 3], torch.ones(4), {}, positions="first")


@pytest.mark.parametrize("method", ["mean_difference", "pca"])
def test_alpha_one_adds_the_mean_difference_along_the_vector(method):
    model, tok = tiny_model("llama"), char_tokenizer()
    paired = V.collect_paired(model, tok, TEXTS, [t.upper() + " 7" for t in TEXTS], reduce="mean", batch_size=3,
                              progress=False)
    sv = V._steering_vectors("v", paired, method, "prompt", {"vector": "test"})
    diff = V.mean_difference(paired.positive, paired.negative)
    assert sv.positions == "prompt" and sv.source["positions"] == "prompt" and sv.source["method"] == method
    for i, layer in enumerate(sv.layers):
        added = sv.intervention(layer, alpha=1.0).delta()
        unit = sv.vector(layer) / sv.vector(layer).norm()
        torch.testing.assert_close(added, (diff[i] @ unit) * unit, atol=1e-4, rtol=1e-4)  # the projection
        if method == "mean_difference":
            torch.testing.assert_close(added, diff[i])
        torch.testing.assert_close(sv.intervention(layer, alpha=2.0).delta(), 2 * added)
    # the provenance carries alpha_scale, so the vectors rebuilt from their source mean the same alpha
    again = V.SteeringVectors("v", sv.vectors, sv.layers, sv.residual_norms, dict(sv.source))
    assert torch.allclose(again.alpha_scale, sv.alpha_scale) and again.positions == "prompt"


def test_alpha_scale():
    v = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    m = torch.tensor([[3.0, 5.0], [1.0, 1.0]])
    assert V.alpha_scale(v, m).tolist() == [1.5, 0.0]  # (m . v) / ||v||^2; zero vector -> 0
    with pytest.raises(ValueError, match="mean_differences"):
        V.alpha_scale(v, m[:1])


def test_builders_apply_en_to_the_prompt_and_loc_at_the_last_token():
    model, tok = tiny_model("llama"), char_tokenizer()
    en = C.en_transfer_vectors(model, tok, "es", n=4, batch_size=4, progress=False)
    assert en.positions == "prompt" and en.intervention(1, alpha=1.0).positions == "prompt"
    assert en.intervention(1, alpha=1.0, positions="all").positions == "all"  # "all" stays available
    assert en.source["n_prompts"] == 4 and en.source["alpha_scale"] == [1.0] * 4
    assert en.source["reduce"] == "mean"  # the collection pooled over the sentence (contrast_vectors records it)
    loc = C.loc_vectors(model, tok, "es", n=4, batch_size=4, progress=False)
    assert loc.positions == "last" and loc.intervention(1, alpha=1.0).positions == "last"
    assert loc.source["reduce"] == "last"  # estimated where it is applied
    pooled = C.loc_vectors(model, tok, "es", n=4, batch_size=4, progress=False, reduce="mean")
    assert not torch.allclose(loc.vectors, pooled.vectors)  # and the estimate differs from a pooled one


@pytest.mark.gemma
def test_gemma_smoke(gemma):
    model, tok = gemma
    texts = ["The weather is nice today.", "Water boils at 100 degrees.", "I like reading books."]
    other = ["오늘은 날씨가 좋다.", "물은 100도에서 끓는다.", "나는 책 읽기를 좋아한다."]
    reps = V.sentence_representations(model, tok, texts + other, batch_size=4, progress=False)
    assert reps.shape == (18, 6, 640) and torch.isfinite(reps).all()
    paired = V.collect_paired(model, tok, texts, other, reduce="mean", batch_size=2, progress=False)
    md = V.mean_difference(paired.positive, paired.negative)
    torch.testing.assert_close(md, reps[:, :3].mean(1) - reps[:, 3:].mean(1), atol=1e-2, rtol=1e-4)
    norms = paired.positive.residual_norms
    assert norms.shape == (18,) and (norms > 0).all()
