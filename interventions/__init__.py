"""Steering as data: components by meaning, additive and "set" interventions, applied through pyvene.

>>> from interventions import load_model, load_tokenizer, AdditiveIntervention, InterventionConfig, steer
"""

from .components import COMPONENTS, decoder_layers, resolve, unwrap
from .config import (
    AdditiveIntervention,
    InterventionConfig,
    InterventionConfigError,
    SetIntervention,
)
from .models import load_model, load_tokenizer
from .steer import steer

__all__ = [
    "COMPONENTS", "AdditiveIntervention", "InterventionConfig", "InterventionConfigError", "SetIntervention",
    "decoder_layers", "load_model", "load_tokenizer", "resolve", "steer", "unwrap",
]
