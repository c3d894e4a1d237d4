"""Alignment adapter directories: write (adapter + training metadata + model card) and load.

An adapter directory is what PEFT's ``save_pretrained`` writes (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``training_metadata.json`` (method, config, languages, data
sizes, steps, seed, final losses, library versions; sorted keys) and a ``README.md`` model card.
The same directory pushed to the Hub loads by its repo id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interventions.hub import push_to_hub

METADATA_FILE = "training_metadata.json"

_PAPERS = {
    "multilingual_sft": "Multilingual supervised fine-tuning (TRL `SFTTrainer`) on FLORES-200 dev translation "
                        "and continuation instructions.",
    "midalign": "MidAlign (Liu & Niehues 2025): InfoNCE alignment of mean-pooled middle-layer representations of "
                "parallel sentences, alternating with the language-modelling loss.",
    "clo": "Cross-lingual optimisation, CLO (Lee et al. 2025): DPO on cross-lingual preference pairs plus an NLL "
           "term on target-language responses.",
}


def write_metadata(out_dir: str | Path, metadata: dict[str, Any]) -> Path:
    path = Path(out_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_metadata(path_or_dir: str | Path) -> dict[str, Any]:
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / METADATA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no training metadata (expected {METADATA_FILE} in the adapter directory)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def model_card(metadata: dict[str, Any]) -> str:
    """A README.md model card (Hub front matter + method, data, settings, losses)."""
    method = metadata["method"]
    config = metadata["config"]
    base = metadata.get("base_model", config.get("model", ""))
    langs = ["en", *metadata["languages"]]
    losses = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metadata.get("final_losses", {}).items()))
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(config.items()))
    lang_lines = "\n".join(f"- {lang}" for lang in langs)
    return f"""---
base_model: {base}
library_name: peft
tags:
- peft
- lora
- cross-lingual-alignment
- {method}
language:
{lang_lines}
---

# {method} alignment adapter for {base}

{_PAPERS.get(method, method)}

LoRA adapter (PEFT) trained for {metadata['steps']} optimizer steps (seed {metadata['seed']}) on
FLORES-200 `dev` only (English paired with {', '.join(metadata['languages'])}; the last
{config.get('held_out')} lines held out; lines sharing text with FLORES `devtest` or any evaluation task dropped).
Training examples: {metadata['data']['n_train_examples']} built from {metadata['data']['n_sentences']} parallel lines.

Load it (unmerged, so steering interventions can be stacked on top):

```python
from interventions.models import load_model
from alignment.adapters import load_adapter
model = load_adapter(load_model("{config.get('model')}"), "PATH_OR_HUB_ID")
```

## Final losses

| loss | value |
|---|---|
{losses}

## Settings

| field | value |
|---|---|
{settings}

Wall time: {metadata.get('wall_time_s', float('nan')):.0f} s. Versions: {metadata.get('versions')}.
"""


def write_model_card(out_dir: str | Path, metadata: dict[str, Any]) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(model_card(metadata), encoding="utf-8")
    return path


def load_adapter(model, path_or_hub_id: str | Path, *, adapter_name: str = "default", is_trainable: bool = False,
                 revision: str | None = None):
    """Load an alignment adapter (a local directory or a Hub id) onto ``model`` -> ``PeftModel``.

    The adapter stays unmerged (call ``merge_and_unload()`` for a merged plain model).
    """
    from peft import PeftModel

    path = Path(path_or_hub_id)
    if path.exists() and not (path / "adapter_config.json").is_file():
        raise ValueError(f"{path}: not an adapter directory (expected adapter_config.json and "
                         "adapter_model.safetensors)")
    kwargs = {"revision": revision} if revision is not None else {}
    peft_model = PeftModel.from_pretrained(model, str(path_or_hub_id), adapter_name=adapter_name,
                                           is_trainable=is_trainable, **kwargs)
    if not is_trainable:
        peft_model.eval()
    return peft_model


def push_adapter(out_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload an adapter directory (adapter, metadata, model card) to the Hub; returns the repo URL."""
    out_dir = Path(out_dir)
    if not (out_dir / "adapter_config.json").is_file():
        raise ValueError(f"{out_dir}: not an adapter directory (expected adapter_config.json)")
    return push_to_hub(repo_id, [(out_dir, "")], private=private, token=token,
                       commit_message="Upload alignment adapter")[0]
