"""Names shown to people, one spelling everywhere (CLI, workbench, exports): a head is `L0H2`."""

from __future__ import annotations


def head_name(layer: int | str, head: int | str) -> str:
    """Head `head` of layer `layer` as the CLI, the workbench and exports all write it: `L0H2`."""
    return f"L{layer}H{head}"
