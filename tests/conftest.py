import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer) of the real google/gemma-3-270m, converted once into the cache."""
    from interventions.models import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
