"""Model cards (README.md) for intervention directories, built with ``huggingface_hub.ModelCard``.

Takes plain data (the ``base_model`` mapping and the interventions, each of which describes itself with
``describe()``), not the config class.
"""

from __future__ import annotations

from typing import Any


def _row(iv) -> str:
    src = iv.source or {}
    data = src.get("data", "")
    if isinstance(data, (list, tuple)):
        data = ", ".join(map(str, data))
    return (f"| `{iv.name}` | {iv.kind} | {iv.role} | {iv.language or 'any'} | `{iv.component}` | {iv.layer} | "
            f"{iv.positions} | {iv.describe()} | {src.get('method', '')} | {data} | "
            f"{src.get('n', src.get('n_prompts', ''))} |")


def model_card(base_model: dict[str, Any], interventions: list, pyvene_layout: bool = False,
               extra: str | None = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model.get("name_or_path") or "unknown"
    data = ModelCardData(library_name="surgical-steering", base_model=base if base != "unknown" else None,
                         tags=["steering", "pyvene", "multilingual", "interventions"])
    rows = "\n".join(_row(iv) for iv in interventions)
    pyvene_note = (
        "This directory also holds pyvene's own layout (`config.json`, `intkey_*.bin`): "
        "`pyvene.IntervenableModel.load(dir, model)` after `interventions.pyvene_compat.register(model)` "
        "(pyvene 0.1.8 maps components only for the model classes it knows). pyvene's loader imports the "
        "modules named in `config.json` (and `torch.load`s trainable interventions), so use it only on "
        "directories you trust; `InterventionConfig.from_pretrained` reads only JSON and safetensors."
        if pyvene_layout else "")
    body = f"""
# Intervention config for `{base}`

Steering as data: {len(interventions)} intervention(s) made with
[surgical-steering](https://pypi.org/project/surgical-steering/) for **{base}**
(model_type `{base_model.get('model_type', '?')}`, hidden size {base_model.get('hidden_size', '?')},
{base_model.get('num_hidden_layers', '?')} layers).

| name | kind | role | language | component | layer | positions | what | method | data | n |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Components are named by meaning: `block_output` is the residual stream after decoder layer L,
`block_input` the stream entering it, `attention_output`/`mlp_output` the blocks' outputs before
the residual add, `mlp_hidden` the MLP neurons (input of the down-projection), `attention_heads`
the concatenated head outputs (input of the attention output projection). Positions:
`all`, `prompt` (tokens of the prompt), `generated` (tokens after the prompt / after a cached
prefix), `last` (the prompt's last token).

## How to load

```python
from interventions import InterventionConfig, load_model, load_tokenizer, steer

model, tokenizer = load_model("{base}"), load_tokenizer("{base}")
config = InterventionConfig.from_pretrained("<this directory or Hub repo id>", model=model)
with steer(model, config):
    out = model.generate(**tokenizer("...", return_tensors="pt"), max_new_tokens=20)
```

Files: `intervention_config.json` (what, where, how strong, role and language, provenance),
`intervention_vectors.safetensors` (the tensors). Loading reads JSON and safetensors only. {pyvene_note}
"""
    if extra:
        body += "\n## Results\n\n" + extra.strip() + "\n"
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))
