"""Our ``evaluate.requests.loglikelihood`` vs lm-evaluation-harness's ``HFLM.loglikelihood``, side by side.

Both score the same ``(context, continuation)`` requests, built from a seeded, stratified sample of the bundled
tasks' items (:func:`sample_items`: every task x language, one item per question group, strata as
:func:`evaluate.sampling.stratified_sample`; each candidate of an item is one request), with the same model
folder, float32, CPU, the same batch size and the same number of torch threads. Timings exclude the model
load and a warm-up call; tokenisation is inside both timings. Prints and writes (``--out``/bench_lmeval.json)
the wall-clock and CPU-time ratio (lm-eval / ours), the largest |log-prob| difference, the greedy-flag
agreement and whether the two sides encoded every request to the same token ids.

lm-eval imports Hugging Face's ``evaluate``, which this repository's ``evaluate/`` shadows, so it runs in its
own venv (``bash benchmarks/lmeval_env.sh`` builds ``.venv-lmeval/``) as a subprocess
(benchmarks/lmeval_worker.py) from a temporary working directory, without PYTHONPATH.

    bash benchmarks/lmeval_env.sh
    python benchmarks/bench_lmeval.py --out benchmarks/results/lmeval --limit 200 --batch-size 16 --threads 2
    python benchmarks/bench_lmeval.py --out benchmarks/results/lmeval_5shot --limit 200 --batch-size 8 --threads 2 --fewshot 5
    python benchmarks/bench_lmeval.py --model /tmp/tiny-gemma --limit 12 --out /tmp/bench-lmeval   # a saved model

``--model``: ``gemma-3-270m`` (default; the converted folder under ~/.cache/surgical_steering/, see
``interventions.models.resolve_model_path``) or any local model folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from evaluate.requests import LoglikelihoodRequest, encode_request, loglikelihood, requests_from_items  # noqa: E402
from evaluate.sampling import group_of, stratified_sample  # noqa: E402
from evaluate.tasks import get_task, list_tasks  # noqa: E402
from interventions.models import load_model, load_tokenizer, resolve_model_path  # noqa: E402

WORKER = Path(__file__).with_name("lmeval_worker.py")
DEFAULT_VENV = ROOT / ".venv-lmeval"
GOAL_SPEEDUP, GOAL_ATOL = 5.0, 1e-4


def sample_items(limit: int, seed: int = 0, tasks: list[str] | None = None) -> list:
    """At most ``limit`` items spread evenly over every (task, language), stratified and seeded in each.

    Each cell gets ``limit // cells`` items, the first ``limit % cells`` cells in a seeded order one more; a cell
    draws its quota of question groups with :func:`stratified_sample` (no cap on repeated gold answers: a timing
    sample, not a metric) and keeps one item per group: the cell language's implicit one when there is one
    (locale_probe's groups also hold an English control). A cell with fewer groups than its quota
    gives what it has. Items come out by task, language, id.
    """
    if limit < 1:
        raise ValueError(f"limit: expected a positive number of items, got {limit!r}")
    cells = [(name, lang) for name in (tasks or list_tasks()) for lang in get_task(name).languages]
    rank = sorted(cells, key=lambda c: hashlib.sha256(f"{seed}\x1f{c[0]}\x1f{c[1]}".encode()).digest())
    quota = {c: limit // len(cells) + (rank.index(c) < limit % len(cells)) for c in cells}
    out = []
    for name, lang in cells:
        if not quota[(name, lang)]:
            continue
        items = get_task(name).items(lang, split="all")
        members: dict[str, list] = {}
        for it in stratified_sample(items, quota[(name, lang)], seed=seed, max_gold_share=None):
            members.setdefault(group_of(it), []).append(it)
        chosen = [min(its, key=lambda it: (it.language != lang, it.cue != "implicit", it.id))
                  for its in members.values()]
        out.extend(sorted(chosen, key=lambda it: it.id)[: quota[(name, lang)]])
    return out


def fewshot_requests(items: list, shots: int, seed: int = 0) -> list[LoglikelihoodRequest]:
    """Requests with ``shots`` demonstrations before each item's prompt, as lm-eval's ``num_fewshot`` builds them:
    ``demo.prompt + demo answer`` for ``shots`` other items of the same task and language (drawn seeded from the
    items' own task split, a different question group, with a known answer: gold, else local), joined by a
    blank line, then the item's prompt; one request per candidate. ``shots=0``: :func:`requests_from_items`."""
    if shots < 0:
        raise ValueError(f"shots: expected an integer >= 0, got {shots!r}")
    if not shots:
        return requests_from_items(items)
    out = []
    pools: dict[tuple[str, str], list] = {}
    for it in items:
        pool = pools.setdefault((it.task, it.language), [
            d for d in get_task(it.task).items(it.language, split="all")
            if (d.gold if d.gold is not None else d.local) is not None])
        rng = random.Random(f"{seed}\x1f{it.id}")
        demos = [d for d in pool if group_of(d) != group_of(it)]
        demos = rng.sample(demos, min(shots, len(demos)))
        shown = [d.prompt + d.candidates[d.gold if d.gold is not None else d.local] for d in demos]
        context = "\n\n".join([*shown, it.prompt])
        out.extend(LoglikelihoodRequest(context, cand) for cand in it.candidates)
    return out


def compare_results(ours: list, theirs: list, sizes: list[int] | None = None) -> dict:
    """Largest / mean |log-prob| difference, greedy-flag agreement and (with ``sizes``, the number of requests
    of each item in order) how often the argmax over an item's requests agrees."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"results: expected two equally long non-empty lists, got {len(ours)} and {len(theirs)}")
    diffs = [abs(float(a[0]) - float(b[0])) for a, b in zip(ours, theirs)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    greedy = [bool(a[1]) == bool(b[1]) for a, b in zip(ours, theirs)]
    res = {"n_requests": len(ours), "max_abs_logprob_diff": diffs[worst], "worst_request": worst,
           "mean_abs_logprob_diff": sum(diffs) / len(diffs), "greedy_agreement": sum(greedy) / len(greedy),
           "n_greedy_disagree": len(greedy) - sum(greedy)}
    if sizes is not None:
        if sum(sizes) != len(ours):
            raise ValueError(f"sizes: sum {sum(sizes)} is not the number of requests {len(ours)}")
        agree, start = 0, 0
        for n in sizes:
            a, b = ours[start:start + n], theirs[start:start + n]
            agree += max(range(n), key=lambda j: a[j][0]) == max(range(n), key=lambda j: b[j][0])
            start += n
        res["choice_agreement"] = agree / len(sizes)
    return res


def run_lmeval(python: Path, model_path: str, requests: list[LoglikelihoodRequest], out_dir: Path, batch_size: int,
               threads: int, warmup: int) -> dict:
    """``HFLM.loglikelihood`` in the lm-eval venv's python, from a temporary cwd with no PYTHONPATH."""
    req_file, res_file = out_dir / "requests.json", out_dir / "lmeval_results.json"
    req_file.write_text(json.dumps([[r.context, r.continuation] for r in requests], ensure_ascii=False))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="lmeval-cwd-") as cwd:
        subprocess.run([str(python), str(WORKER), "--model", model_path, "--requests", str(req_file.resolve()),
                        "--out", str(res_file.resolve()), "--batch-size", str(batch_size), "--threads", str(threads),
                        "--warmup", str(warmup)], cwd=cwd, env=env, check=True)
    return json.loads(res_file.read_text())


def run_ours(model_path: str, tokenizer, requests: list[LoglikelihoodRequest], batch_size: int, threads: int,
             warmup: int) -> dict:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(model_path, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    if warmup:
        loglikelihood(model, tokenizer, requests[:warmup], batch_size=batch_size, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    results = loglikelihood(model, tokenizer, requests, batch_size=batch_size, progress=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {"results": [list(r) for r in results], "seconds": seconds, "cpu_seconds": cpu_seconds,
            "load_seconds": load_s, "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (the cached folder) or a model folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for bench_lmeval.json and the raw results")
    ap.add_argument("--limit", type=int, default=200, help="number of items (each candidate is one request)")
    ap.add_argument("--tasks", nargs="*", default=None, help="default: every registered task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fewshot", type=int, default=0,
                    help="demonstrations of the same task and language before each prompt (lm-eval's num_fewshot)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--warmup", type=int, default=4, help="requests scored once, untimed, before each timed run")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the lm-eval venv (benchmarks/lmeval_env.sh)")
    args = ap.parse_args(argv)
    python = args.venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"--venv: {python} not found; build it with `bash benchmarks/lmeval_env.sh`")
    model_path = str(Path(resolve_model_path(args.model)).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    items = sample_items(args.limit, seed=args.seed, tasks=args.tasks)
    requests = fewshot_requests(items, args.fewshot, seed=args.seed)
    sizes = [len(it.candidates) for it in items]
    tokenizer = load_tokenizer(model_path)
    encodings = [list(map(list, encode_request(tokenizer, r))) for r in requests]
    longest = max(len(c) + len(x) for c, x in encodings)
    vocab = AutoConfig.from_pretrained(model_path).get_text_config().vocab_size
    print(f"{len(items)} items, {len(requests)} requests (longest {longest} tokens); model {model_path}; "
          f"batch {args.batch_size}, {args.threads} threads; lm-eval's full-vocabulary log-probs of one batch take "
          f"up to ~{2 * args.batch_size * longest * vocab * 4 / 2**30:.1f} GiB", flush=True)

    theirs = run_lmeval(python, model_path, requests, args.out, args.batch_size, args.threads, args.warmup)
    ours = run_ours(model_path, tokenizer, requests, args.batch_size, args.threads, args.warmup)
    cmp = compare_results(ours["results"], theirs["results"], sizes)
    same_enc = [a == b for a, b in zip(encodings, theirs["encodings"])]
    result = {
        "model": args.model, "model_path": model_path, "dtype": "float32", "device": "cpu",
        "batch_size": args.batch_size, "threads": args.threads, "threads_seen": [ours["threads"], theirs["threads"]],
        "seed": args.seed, "limit": args.limit, "fewshot": args.fewshot, "warmup": args.warmup, "n_items": len(items),
        "n_requests": len(requests), "longest_request_tokens": longest,
        "items_per_task_language": dict(Counter(f"{it.task}/{it.language}" for it in items)),
        "ours_s": ours["seconds"], "lmeval_s": theirs["seconds"],
        "ours_cpu_s": ours["cpu_seconds"], "lmeval_cpu_s": theirs["cpu_seconds"],
        "speedup": theirs["seconds"] / ours["seconds"], "speedup_cpu_time": theirs["cpu_seconds"] / ours["cpu_seconds"],
        "load_s": {"ours": ours["load_seconds"], "lmeval": theirs["load_seconds"]},
        **cmp, "n_encodings_identical": sum(same_enc), "encodings_identical": all(same_enc),
        "lmeval_versions": theirs["versions"], "lmeval_max_length": theirs["max_length"],
        "torch": torch.__version__,
    }
    result["meets_goal"] = result["speedup"] >= GOAL_SPEEDUP and result["max_abs_logprob_diff"] <= GOAL_ATOL
    (args.out / "bench_lmeval.json").write_text(json.dumps(result, indent=2))
    (args.out / "ours_results.json").write_text(json.dumps(ours["results"]))
    print(json.dumps({k: v for k, v in result.items() if k != "items_per_task_language"}, indent=2))
    print(f"lm-eval / ours: {result['speedup']:.2f}x wall, {result['speedup_cpu_time']:.2f}x CPU time; "
          f"max |dlogprob| {result['max_abs_logprob_diff']:.2e}; greedy agreement {result['greedy_agreement']:.3f}; "
          f"encodings identical {sum(same_enc)}/{len(same_enc)}")
    return result


if __name__ == "__main__":
    main()
