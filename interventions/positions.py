"""Which tokens an intervention applies to, decided per forward call (``positions`` of an intervention).

Positions are decided from what the decoder stack receives: a call with an empty KV cache is a *prompt*
call (``last`` = each row's last non-padding token); a call that extends a non-empty cache holds
*generated* tokens. :class:`StepState` records that per call (a forward pre-hook on the decoder stack);
:func:`position_mask` turns it into where a pyvene intervention module writes.
"""

from __future__ import annotations

import torch


class StepState:
    """What the current forward call is: prompt or generated tokens, and each row's last position."""

    def __init__(self) -> None:
        self.generated = False
        self.last_index: torch.Tensor | None = None

    def pre_hook(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        seq_len = x.shape[1] if x is not None and x.dim() >= 2 else 1
        # the KV cache is passed as `past_key_values` or `cache` depending on the model and version
        past = next((v for v in list(kwargs.values()) + list(args) if hasattr(v, "get_seq_length")), None)
        past_len = int(past.get_seq_length()) if past is not None else 0
        cache_position = kwargs.get("cache_position")
        if past_len == 0 and isinstance(cache_position, torch.Tensor) and cache_position.numel():
            past_len = int(cache_position.reshape(-1)[0])
        self.generated = past_len > 0
        mask = kwargs.get("attention_mask")
        if not self.generated and isinstance(mask, torch.Tensor) and mask.dim() == 2:
            current = mask[:, -seq_len:].to(torch.long)
            # index of the last non-padding token of each row (left or right padding)
            self.last_index = seq_len - 1 - torch.flip(current, dims=[1]).argmax(dim=1)
        else:
            self.last_index = None
        return None


def position_mask(state: StepState, positions: str, base: torch.Tensor) -> torch.Tensor | bool:
    """True where the intervention applies: a bool, or a (batch, seq, 1) mask."""
    if positions == "all":
        return True
    if positions == "prompt":
        return not state.generated
    if positions == "generated":
        return state.generated
    # last
    if state.generated:
        return False
    b, s = base.shape[0], base.shape[1]
    idx = state.last_index if state.last_index is not None else torch.full((b,), s - 1)
    mask = torch.zeros(b, s, 1, dtype=torch.bool, device=base.device)
    mask[torch.arange(b, device=base.device), idx.to(base.device)] = True
    return mask
