"""Feature dashboards: what each SAE feature does across held-out text, built in one scan and opened instantly.

The build scans token rows once. Per batch it runs the model up to the SAE's layer, encodes z, and folds the
non-zero activations into running per-feature state (all vectorised over features):

- the top-N activations with their location and the feature's activations in a +-C token window;
- a uniform random sample of firing positions (priority sampling: every firing gets a random key, each feature keeps
  its largest keys), later split into activation-quantile bins;
- a histogram of log10(activation) on fixed bins, firing counts and sums (density, mean).

Only the batch's firings are touched: per feature, only the candidates that beat its current N-th entry go into one
grouped merge (equal activations or keys go to the earliest position, everywhere), and the state stays on the
model's device.

Whenever an example enters a feature's top-N, its DFA by source (and by head) is computed on the spot from that
batch's attention pattern and values, so no row is ever run twice. BOS positions are skipped (their z is the same
for every row). One scan can serve several layers (`build_layers`): the model runs once per batch, up to the deepest
layer's attention. The state is checkpointed, so an interrupted build resumes where it stopped and ends with exactly
the result of an uninterrupted one. Afterwards the static parts are added (head shares of the decoder norm, logit
effects). Everything is stored as one safetensors file with `[d_sae, ...]` tensors plus a JSON index, so one feature
is a handful of memory-mapped slices.

The package, by what each part does: `scan` (the running per-feature state and each example's DFA facts),
`build` (one scan over held-out text, checkpointed, then the static parts), `store` (where builds live, the
registry, writing the files) and `read` (one feature back, summaries, whole-layer arrays). Every public name is
importable from here; nothing is imported until it is used, so reading a built dashboard does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["DashboardSpec", "DashboardScan", "DFA_FIELDS", "distance_bin", "example_dfa", "n_distance_bins",
                     "source_facts", "topk_acts"], "scan"),
    **dict.fromkeys(["LOGIT_NOTE", "BuildResult", "Texts", "build_dashboards", "build_layers", "heldout_rows",
                     "logit_effects"], "build"),
    **dict.fromkeys(["DATA", "FORMAT_VERSION", "INDEX", "PARTIAL", "PARTIAL_INDEX", "REGISTRY", "DashboardError",
                     "build_command", "cache_root", "dashboard_dir", "is_built", "lookup_built", "model_fingerprint", "readable_build",
                     "register_built", "sae_fingerprint", "source_key"], "store"),
    **dict.fromkeys(["Example", "ExampleDFA", "FeatureDashboard", "QuantileBin", "dashboard_summary", "feature_stats",
                     "load_dashboard", "read_dashboard"], "read"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
