#!/usr/bin/env bash
# Build the separate virtual environment in which benchmarks/bench_lmeval.py runs lm-evaluation-harness.
#
# lm-eval imports Hugging Face's `evaluate` package, which this repository's top-level `evaluate/` package
# shadows, so lm-eval cannot run in the project's environment: it gets its own venv (.venv-lmeval/, git-ignored)
# and is run as a subprocess from a working directory outside the repository.
#
#   bash benchmarks/lmeval_env.sh            # creates .venv-lmeval/ next to benchmarks/
#   LMEVAL_VENV=/some/dir bash benchmarks/lmeval_env.sh
#
# lm-eval[hf] brings accelerate and peft, which HFLM imports. torch is pinned to exactly 2.13.0 (the CPU wheel
# this machine holds; a looser spec can pull the CUDA build), transformers to the project environment's
# version, so both sides run the same model code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMEVAL_VENV:-$ROOT/.venv-lmeval}"
PYTHON="${PYTHON:-python3}"
LMEVAL_VERSION="${LMEVAL_VERSION:-0.4.13}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-$(cd / && "$PYTHON" -c 'import transformers; print(transformers.__version__)')}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install "torch==2.13.0" "lm-eval[hf]==$LMEVAL_VERSION" "transformers==$TRANSFORMERS_VERSION"
cd / && "$VENV/bin/python" -c 'import lm_eval, torch, transformers; from lm_eval.models.huggingface import HFLM; print("lm-eval", lm_eval.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
