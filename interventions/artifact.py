"""The intervention directory's vocabulary: file names, ``format_version``, positions, roles, the error type.

Format history:

* **2** -- every intervention entry has ``role`` (one of :data:`ROLES`) and ``language`` (an ISO 639 code
  such as ``"ko"``, or null for a language-agnostic intervention) as typed fields.
* **1** -- role and language lived only in free-form ``source`` provenance (or in names such as
  ``en_transfer_ko``). Version-1 directories still load: :func:`interventions.loader.migrate_v1` derives
  both fields with :func:`role_and_language` (the same rule an intervention built without them uses).

This module imports nothing from the package, so every other module can use it.
"""

from __future__ import annotations

import re
from typing import Any

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "intervention_config.json"
VECTORS_NAME = "intervention_vectors.safetensors"
POSITIONS = ("all", "prompt", "generated", "last")
# en_transfer: English-minus-L direction (transfer); loc_cultural: explicit-cue-minus-no-cue direction
# (localization); experts: language-expert units; control: a random control of another intervention
ROLES = ("en_transfer", "loc_cultural", "experts", "control", "other")
LANGUAGE_PATTERN = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{1,8})*")


class InterventionConfigError(ValueError):
    """A config that does not fit: ``field`` names the offending field, the message says what was expected."""

    def __init__(self, field_name: str, message: str, source: str | None = None):
        self.field = field_name
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{field_name}: {message}")


def is_language(value: Any) -> bool:
    return isinstance(value, str) and LANGUAGE_PATTERN.fullmatch(value) is not None


def check_role_and_language(role: Any, language: Any, where: str, source: str | None = None) -> None:
    """Refuse a role outside :data:`ROLES` or a language that is not an ISO 639 code (or None)."""
    if not isinstance(role, str) or role not in ROLES:
        raise InterventionConfigError(f"{where}.role", f"expected one of {list(ROLES)}, got {role!r}", source)
    if language is not None and not is_language(language):
        raise InterventionConfigError(f"{where}.language", f"expected an ISO 639 language code such as 'ko' "
                                      f"(or null for a language-agnostic intervention), got {language!r}", source)


def role_and_language(source: Any) -> tuple[str, str | None]:
    """``(role, language)`` derived from an intervention's ``source`` provenance.

    role: ``source["role"]``; else ``source["vector"]`` (``"en_transfer"`` / ``"loc_cultural"``, written by
    :mod:`interventions.vectors`); else ``"experts"`` for ``source["method"] == "finding_experts"``; else
    ``"other"``. language: ``source["language"]``; else the ``negative`` side of an EN-transfer vector; else
    the one language of ``source["languages"]`` (the one besides English when there are two); else None.
    """
    source = source if isinstance(source, dict) else {}
    vector = source.get("vector")
    role = source.get("role")
    if role is None:
        if vector in ("en_transfer", "loc_cultural"):
            role = vector
        elif source.get("method") == "finding_experts":
            role = "experts"
        else:
            role = "other"
    language = source.get("language")
    if language is None and vector == "en_transfer" and is_language(source.get("negative")):
        language = source["negative"]
    languages = source.get("languages")
    if language is None and isinstance(languages, (list, tuple)):
        others = [x for x in languages if x != "en"]
        language = languages[0] if len(languages) == 1 else others[0] if len(others) == 1 else None
    return role, language
