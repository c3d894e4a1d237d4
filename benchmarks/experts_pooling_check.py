"""Does the experts' retrieval effect depend on <bos> in the mean pooling?

Retrieval top-1 (FLORES devtest, first n sentences) before/after forcing the top-k experts of LANG, with the
sentence representation mean-pooled over all tokens (<bos> kept, as evaluate.experts_eval once did) and over the
non-special tokens (<bos> excluded, what evaluate.retrieval does everywhere now), both from the same forward
passes: the check that led to the project's one pooling.

    python benchmarks/experts_pooling_check.py ar 10 100 RANKINGS_DIR out.json
(RANKINGS_DIR/<lang>/ranking as written by ``python -m evaluate.experts find|report``.)
"""
import json, sys, time
import numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from interventions import load_model, load_tokenizer
from interventions.experts import ExpertRanking
from interventions.steer import steer
from interventions.vectors import tokenize
from evaluate.loaders import load_flores
from evaluate.experts_eval import bootstrap_ratio
from evaluate.retrieval import retrieval_hits
from interventions.components import decoder_stack

lang, k, n, rankings, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
model, tok = load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
ranking = ExpertRanking.load(f"{rankings}/{lang}/ranking")
config = ranking.config(model, k)

def reps(texts, cfg):
    out_keep, out_excl = [], []
    ctx = steer(model, cfg) if cfg is not None else None
    if ctx: ctx.__enter__()
    try:
        for s in range(0, len(texts), 16):
            enc = tokenize(tok, texts[s:s + 16], exclude_special=True, max_length=128)
            tm = enc.pop("token_mask")
            with torch.no_grad():
                hs = decoder_stack(model)(**enc, output_hidden_states=True).hidden_states[1:]
            h = torch.stack(hs).float()  # [L, b, t, H]
            am = enc["attention_mask"].bool()
            for mask, acc in ((am, out_keep), (tm, out_excl)):
                m = mask[None, :, :, None].float()
                acc.append((h * m).sum(2) / m.sum(2))
    finally:
        if ctx: ctx.__exit__(None, None, None)
    return torch.cat(out_keep, 1), torch.cat(out_excl, 1)

src, en = load_flores(lang, "devtest")[:n], load_flores("en", "devtest")[:n]
t0 = time.time()
sb, eb = reps(src, None), reps(en, None)
sa, ea = reps(src, config), reps(en, config)
out = []
for i, pooling in enumerate(("bos_kept", "bos_excluded")):
    for mode, e_after in (("source", eb[i]), ("both", ea[i])):
        for direction in ("L->en", "en->L"):
            b = retrieval_hits(sb[i], eb[i]) if direction == "L->en" else retrieval_hits(eb[i], sb[i])
            a = retrieval_hits(sa[i], e_after) if direction == "L->en" else retrieval_hits(e_after, sa[i])
            bm, am_ = b.float().mean(0).numpy(), a.float().mean(0).numpy()
            r, lo, hi = bootstrap_ratio(bm, am_)
            mid = b.shape[0] // 2
            rm, lom, him = bootstrap_ratio(b[mid].float().numpy(), a[mid].float().numpy())
            row = dict(language=lang, k=k, n=n, pooling=pooling, apply_to=mode, direction=direction,
                       mean_before=float(bm.mean()), mean_after=float(am_.mean()), mean_ratio=[r, lo, hi],
                       middle_before=float(b[mid].float().mean()), middle_after=float(a[mid].float().mean()),
                       middle_ratio=[rm, lom, him], per_layer_before=b.float().mean(1).tolist(),
                       per_layer_after=a.float().mean(1).tolist())
            out.append(row)
            print(pooling, mode, direction, f"mean {bm.mean():.3f}->{am_.mean():.3f} ratio {r:.2f} [{lo:.2f},{hi:.2f}]",
                  f"middle {row['middle_before']:.2f}->{row['middle_after']:.2f}", flush=True)
json.dump(out, open(out_path, "w"), indent=1)
print("seconds", time.time() - t0)
