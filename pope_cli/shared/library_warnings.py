"""Library warnings that tell a pope user nothing they can act on, silenced narrowly.

Each filter names the warning's message, its category and the module that issues it, so every
other warning of that library, and every warning of pope, still shows. Installed when pope_cli
is imported, so that it holds in every process pope starts (workers, torchrun ranks, Ray actors).
"""

from __future__ import annotations

import warnings

FILTERS = (
    # peft (through 0.21) reads transformers' deprecated alias `is_gradient_checkpointing` each
    # time it wraps a model (transformers >= 5.24 warns), so every LoRA start printed it: peft's to fix.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


def quiet_library_warnings() -> None:
    for message, category, module in FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
