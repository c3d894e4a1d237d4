"""Steering overhead on gemma-3-270m, measured side by side in one run.

    python benchmarks/bench_steer.py [--repeats 15] [--batch 8]

Prints three ratios (targets in parentheses):
  steered forward / plain forward                       (<= 1.02)
  steered generate (KV cache) / plain generate           (<= 1.05)
  peak RSS of a steered LoRA model / unsteered LoRA      (<= 1.05)
Timings interleave plain and steered calls and take medians, so machine load affects both alike.
Peak memory runs each variant in a fresh child process (ru_maxrss is monotone within a process).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interventions import AdditiveIntervention, InterventionConfig, load_model, load_tokenizer, steer  # noqa: E402
from evaluate.loaders import load_flores  # noqa: E402

MODEL = "gemma-3-270m"


def make_config(model) -> InterventionConfig:
    g = torch.Generator().manual_seed(0)
    return InterventionConfig.for_model(model, [
        AdditiveIntervention("en_transfer", "block_output", 6, torch.randn(640, generator=g), 4.0),
        AdditiveIntervention("loc", "block_output", 12, torch.randn(640, generator=g), 4.0),
    ])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(plain, steered, config, model, repeats: int) -> tuple[float, float]:
    plain(), steered_once(model, config, steered)  # warm up
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(plain))
        b.append(timed(lambda: steered_once(model, config, steered)))
    return statistics.median(a), statistics.median(b)


def steered_once(model, config, fn):
    with steer(model, config):
        fn()


def peak_child(steered: bool, batch: int) -> int:
    """Run one LoRA forward+generate in a fresh process; return its peak RSS in KiB."""
    code = f"""
import sys, resource, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from peft import LoraConfig, get_peft_model
from benchmarks.bench_steer import make_config, prompts
from interventions import load_model, load_tokenizer, steer
model = load_model({MODEL!r}); tok = load_tokenizer({MODEL!r})
model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).eval()
inputs = tok(prompts({batch}), return_tensors="pt", padding=True)
def run():
    with torch.no_grad():
        model(**inputs); model.generate(**inputs, max_new_tokens=16, do_sample=False)
if {steered}:
    with steer(model, make_config(model)):
        run()
else:
    run()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def prompts(batch: int) -> list[str]:
    return [s[:160] for s in load_flores("ko", "dev")[:batch]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(MODEL), load_tokenizer(MODEL)
    config = make_config(model)
    inputs = tok(prompts(args.batch), return_tensors="pt", padding=True)

    def forward():
        with torch.no_grad():
            model(**inputs)

    def generate():
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)

    f_plain, f_steer = interleaved(forward, forward, config, model, args.repeats)
    g_plain, g_steer = interleaved(generate, generate, config, model, max(3, args.repeats // 3))
    m_plain, m_steer = peak_child(False, args.batch), peak_child(True, args.batch)
    results = {
        "forward_plain_s": f_plain, "forward_steered_s": f_steer, "forward_ratio": f_steer / f_plain,
        "generate_plain_s": g_plain, "generate_steered_s": g_steer, "generate_ratio": g_steer / g_plain,
        "peak_rss_plain_mib": m_plain / 1024, "peak_rss_steered_mib": m_steer / 1024,
        "peak_memory_ratio": m_steer / m_plain,
        "batch": args.batch, "tokens": int(inputs["input_ids"].shape[1]), "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": torch.get_num_threads(),
    }
    print(json.dumps(results, indent=2))
    print(f"steered forward / plain:  {results['forward_ratio']:.3f}  (target <= 1.02)")
    print(f"steered generate / plain: {results['generate_ratio']:.3f}  (target <= 1.05)")
    print(f"steered LoRA peak RSS / unsteered: {results['peak_memory_ratio']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
