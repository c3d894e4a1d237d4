"""CLO (Lee et al. 2025): cross-lingual optimisation with TRL's ``DPOTrainer``.

Preference pairs from parallel FLORES dev lines: an English prompt prefers the English response
over the L one, an L prompt prefers the L response over the English one. On top of the DPO
(sigmoid) loss, an NLL term on the chosen responses of the L-prompt pairs only (``nll`` = 1 in
the data): TRL's own ``"sft"`` loss term would apply to every chosen response, English ones
included, so :class:`CLOTrainer` adds the masked term itself from the policy's per-token
log-probabilities of the same forward pass. LoRA on attention projections only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from .config import CLOConfig
from .data import preference_examples, to_dataset
from .training import data_record, finish, lora_config, run_training, start_training, trainer_arguments


class CLOCollator(DataCollatorForPreference):
    """TRL's preference collator plus the per-pair ``nll`` weight (1: chosen response is in L)."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["nll"] = torch.tensor([float(e["nll"]) for e in examples], dtype=torch.float32)
        return batch


class _RecordFirstCall:
    """Calls ``model`` and keeps the outputs of the first call (the policy forward of DPO)."""

    def __init__(self, model):
        self.model = model
        self.outputs = None

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if self.outputs is None:
            self.outputs = out
        return out


def masked_nll(per_token_logps: torch.Tensor, completion_mask: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the chosen-response tokens of the pairs with ``nll`` = 1.

    ``per_token_logps`` and ``completion_mask`` are [2B, T] with chosen rows first (TRL's layout,
    already shifted); ``nll`` is [B]. Zero when no pair in the batch is selected.
    """
    chosen_logps, _ = per_token_logps.chunk(2, dim=0)
    chosen_mask, _ = completion_mask.chunk(2, dim=0)
    weights = chosen_mask.to(chosen_logps.dtype) * nll.to(chosen_logps.dtype).unsqueeze(1)
    return -(chosen_logps * weights).sum() / weights.sum().clamp(min=1.0)


class CLOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is DPO + ``nll_weight`` x NLL on chosen L responses only."""

    def __init__(self, *args, nll_weight: float = 1.0, **kwargs):
        self.nll_weight = nll_weight
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "nll" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "nll"]

    def _compute_loss(self, model, inputs, return_outputs):
        inputs = dict(inputs)
        nll = inputs.pop("nll")
        recorder = _RecordFirstCall(model)
        result = super()._compute_loss(recorder, inputs, return_outputs)
        dpo_loss = result[0] if return_outputs else result
        shift_mask = inputs["completion_mask"][..., 1:]
        per_token_logps = recorder.outputs.log_probs[:, -shift_mask.size(1):]
        nll_loss = masked_nll(per_token_logps, shift_mask, nll)
        loss = dpo_loss + self.nll_weight * nll_loss
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dpo_loss"].append(dpo_loss.detach().item())
        self._metrics[mode]["nll_loss"].append(nll_loss.detach().item())
        return (loss, result[1]) if return_outputs else loss


def train_clo(config: CLOConfig, output_dir: str | Path, *, model=None, tokenizer=None,
              resume: bool = False) -> Path:
    """Train a CLO LoRA adapter into ``output_dir``; returns the adapter directory."""
    from trl import DPOConfig

    model, tokenizer, parallel = start_training(config, CLOConfig, model, tokenizer)
    rows = preference_examples(parallel)
    dataset = to_dataset(rows, config.seed).select_columns(["prompt", "chosen", "rejected", "nll"])
    args = DPOConfig(**trainer_arguments(config, output_dir), max_length=config.max_length, beta=config.beta,
                     loss_type=["sigmoid"], dataset_num_proc=None)
    collator = CLOCollator(pad_token_id=tokenizer.pad_token_id, max_length=config.max_length)
    trainer = CLOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         data_collator=collator, peft_config=lora_config(config), nll_weight=config.nll_weight)
    wall = run_training(trainer, output_dir, resume)
    data_info = data_record(config, parallel, rows, n_nll_pairs=int(sum(r["nll"] for r in rows)))
    return finish(trainer, config, output_dir, data_info, wall)
