"""Analyses of one SAE on one model: direct feature attribution, traces, dashboards and their store, heads, families.

May import `sae.engine`; never `sae.experiments`, `sae.zoo`, `sae.cli` or `workbench`."""
