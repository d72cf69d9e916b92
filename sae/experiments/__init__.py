"""The paper's experiments: induction heads, the IOI circuit and its prompts, the phenomena a model must show.

May import `sae.engine` and `sae.analysis`; never `sae.zoo`, `sae.cli` or `workbench`."""
