"""Names shown to people, one spelling everywhere (CLI, workbench, exports): a head is `L0H2`."""

from __future__ import annotations


def head_name(layer: int | str, head: int | str) -> str:
    """Head `head` of layer `layer` as the CLI, the workbench and exports all write it: `L0H2`."""
    return f"L{layer}H{head}"


def density_text(density: float) -> str:
    """A feature's firing density as the CLI, the workbench and exports all write it: a percentage with 3
    significant digits (0.0123 -> '1.23%', 1.2e-5 -> '0.0012%')."""
    return f"{density * 100:.3g}%"
