"""Why MidAlign's InfoNCE is centred here: the loss on untrained gemma-3-270m, raw vs centred.

    python benchmarks/check_midalign_centring.py [--layer 9] [--languages ko zh es]

For three batches of 8 FLORES dev (English, L) pairs per language, the symmetric InfoNCE (tau 0.1) on the
mean-pooled layer outputs (special tokens excluded, as in training): as written (``none``), centred on
the batch mean (``batch``, the default of ``MidAlignConfig``), and centred per side. ln(8) = 2.079 is the
loss of a model that cannot tell the pairs apart.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.data import parallel_sentences  # noqa: E402
from alignment.midalign import center_pooled, info_nce, mean_pool  # noqa: E402
from interventions import load_model, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--languages", nargs="+", default=["ko", "zh", "es"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
    parallel = parallel_sentences(args.languages, 97, 40)
    special = set(tok.all_special_ids)

    def pooled(texts):
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True, logits_to_keep=1)
        mask = enc["attention_mask"].clone()
        for t in special:
            mask[enc["input_ids"] == t] = 0
        return mean_pool(out.hidden_states[args.layer + 1], mask)

    print(f"ln(8) = {math.log(8):.3f}")
    for lang in args.languages:
        for start in (0, 8, 16):
            en, other = pooled(parallel["en"][start:start + 8]), pooled(parallel[lang][start:start + 8])
            cos = torch.nn.functional.cosine_similarity(en[:, None], en[None], dim=-1)
            off_diag = cos[~torch.eye(8, dtype=torch.bool)].mean()
            src, tgt = center_pooled(torch.cat([en, other])).chunk(2)
            print(f"{lang} batch {start // 8}: none {info_nce(en, other):.3f}  batch {info_nce(src, tgt):.3f}  "
                  f"per side {info_nce(en - en.mean(0), other - other.mean(0)):.3f}  "
                  f"(mean cosine of unrelated English sentences {off_diag:.4f})")


if __name__ == "__main__":
    main()
