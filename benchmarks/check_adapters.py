"""Did each CLA adapter align anything?  Representation-level checks of alignment adapters vs the base model.

    python benchmarks/check_adapters.py --adapters sft=runs/adapters/sft midalign=runs/adapters/midalign \
        clo=runs/adapters/clo [--languages ar es id ko zh] [--n 100] [--out runs/check_adapters]

For the base model and each adapter (loaded unmerged on a fresh copy of the base):

* FLORES-devtest top-1 retrieval L->en and en->L per layer (``block_output`` mean-pooled without ``<bos>``,
  cosine; ``evaluate.retrieval``), and the paired difference adapter - base (per sentence, bootstrap 95% CI) at
  the aligned layer (MidAlign's ``layer``, default ``num_layers // 2``) and averaged over layers;
* perplexity on the held-out FLORES ``dev`` slice that no adapter trained on (the last 97 lines).

Writes ``retrieval.csv``, ``summary.json`` and ``retrieval.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.adapters import load_adapter, read_metadata  # noqa: E402
from alignment.data import held_out_sentences  # noqa: E402
from evaluate.analysis import flores_representations  # noqa: E402
from evaluate.outputs import write_csv  # noqa: E402
from evaluate.experts_eval import perplexity  # noqa: E402
from evaluate.retrieval import retrieval_hits  # noqa: E402
from evaluate.stats import bootstrap_ci, paired_bootstrap  # noqa: E402
from interventions import load_model, load_tokenizer  # noqa: E402
from interventions.components import num_layers  # noqa: E402


def measure(model, tok, languages, n, n_ppl) -> tuple[dict, dict]:
    reps = flores_representations(model, tok, ["en", *languages], "devtest", n, progress=True)
    per = {}  # (language, direction) -> Tensor[layers, n] of hits
    for lang in languages:
        per[(lang, "to_en")] = retrieval_hits(reps[lang], reps["en"]).double()  # [layers, n]
        per[(lang, "from_en")] = retrieval_hits(reps["en"], reps[lang]).double()
    held = held_out_sentences(languages)
    ppl = {lang: perplexity(model, tok, held[lang][:n_ppl]) for lang in ["en", *languages]}
    return per, ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", nargs="+", required=True, help="NAME=DIR pairs")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--languages", nargs="+", default=["ar", "es", "id", "ko", "zh"])
    ap.add_argument("--n", type=int, default=100, help="FLORES devtest sentences per language")
    ap.add_argument("--n-perplexity", type=int, default=48)
    ap.add_argument("--out", default="runs/check_adapters")
    args = ap.parse_args()
    adapters = {}
    for spec in args.adapters:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path, "adapter_config.json").is_file():
            sys.exit(f"--adapters: expected NAME=DIR with DIR an adapter directory, got {spec!r}")
        adapters[name] = path
    tok = load_tokenizer(args.model)
    results = {}
    base = load_model(args.model)
    results["base"] = measure(base, tok, args.languages, args.n, args.n_perplexity)
    default_layer = num_layers(base) // 2
    aligned_layer = default_layer
    for name, path in adapters.items():
        meta = read_metadata(path)
        if meta.get("method") == "midalign":
            aligned_layer = meta.get("data", {}).get("layer", default_layer)
        model = load_adapter(load_model(args.model), path)  # a fresh base: PEFT injects LoRA layers in place
        results[name] = measure(model, tok, args.languages, args.n, args.n_perplexity)
        del model
    rows, summary = [], {"n": args.n, "aligned_layer": aligned_layer, "languages": args.languages, "models": {}}
    base_hits = results["base"][0]
    for name, (per, ppl) in results.items():
        entry = {"perplexity_held_out": ppl, "retrieval": {}}
        for direction in ("to_en", "from_en"):
            for where in ("aligned_layer", "mean_over_layers"):
                pick = (lambda h: h[aligned_layer]) if where == "aligned_layer" else (lambda h: h.mean(0))
                mine = torch.cat([pick(per[(lang, direction)]) for lang in args.languages]).numpy()
                ref = torch.cat([pick(base_hits[(lang, direction)]) for lang in args.languages]).numpy()
                mean, lo, hi = bootstrap_ci(mine)
                cell = {"mean": mean, "ci": [lo, hi]}
                if name != "base":
                    diff = paired_bootstrap(ref, mine)  # mean(mine) - mean(ref)
                    cell["minus_base"] = diff
                entry["retrieval"][f"{direction}@{where}"] = cell
        for (lang, direction), h in per.items():
            for layer, v in enumerate(h.mean(1).tolist()):
                rows.append({"model": name, "language": lang, "direction": direction, "layer": layer,
                             "top1": v})
        summary["models"][name] = entry
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "retrieval.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    grid = sns.relplot(data=pd.DataFrame(rows), x="layer", y="top1", hue="model", col="direction", kind="line",
                       errorbar=None, height=3.2, aspect=1.3)
    grid.set_titles("{col_name}: FLORES devtest top-1 (mean of %d languages)" % len(args.languages))
    grid.savefig(out / "retrieval.png", dpi=110)
    for name, entry in summary["models"].items():
        r = entry["retrieval"]
        parts = [f"{k} {v['mean']:.3f}" + (f" (diff {v['minus_base']['diff']:+.3f}, CI {v['minus_base']['ci_low']:+.3f}"
                                          f"..{v['minus_base']['ci_high']:+.3f})" if "minus_base" in v else "")
                 for k, v in r.items()]
        ppl = ", ".join(f"{k} {v:.1f}" for k, v in entry["perplexity_held_out"].items())
        print(f"{name}: " + "; ".join(parts) + f"\n    held-out perplexity: {ppl}")


if __name__ == "__main__":
    main()
