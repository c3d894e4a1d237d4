"""Run by tests/test_recipes.py under ``accelerate launch --num_processes 2 --cpu``: score fixed
batches of token sequences with a tiny model through recipes.distributed.distributed_map and
write the merged per-item log-likelihoods (main process only) to the JSON path in argv[1]."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from recipes.distributed import distributed_map, is_main_process, partial_state, shutdown  # noqa: E402


def work_units(n_items: int = 37, batch_size: int = 4):
    g = torch.Generator().manual_seed(0)
    items = [torch.randint(3, 120, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
             for _ in range(n_items)]
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def score_batch(model, batch):
    """Summed log P(sequence[1:] | prefix) for each sequence of a left-padded batch."""
    width = max(len(s) for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return [float((logp[i] * mask[i, 1:]).sum()) for i in range(len(batch))]


def run(state=None):
    from tiny_models import tiny_model

    model = tiny_model("llama", seed=0)
    per_batch = distributed_map(lambda b: score_batch(model, b), work_units(), state=state)
    return [x for batch in per_batch for x in batch]


if __name__ == "__main__":
    state = partial_state()
    scores = run(state)
    if is_main_process(state):
        Path(sys.argv[1]).write_text(json.dumps({"num_processes": state.num_processes if state else 1,
                                                 "scores": scores}))
    shutdown(state)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown, where torch's C++ threads can abort the process
