"""attnscope's engine library: models, activations, SAEs, training, metrics and analyses.

Nothing in this package imports Textual; `workbench/` draws what these functions return.
"""

__version__ = "0.1.0"
