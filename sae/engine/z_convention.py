"""The name of attnscope's z convention, torch-free so that caches and file formats can record it.

The convention itself (z = HookedTransformer's processed `hook_z`, i.e. raw z minus `b_V + ln1_b @ W_V` per head)
is stated and computed in `sae.engine.models` (`LoadedModel.z_offset`). Anything derived from z and kept on disk
(dashboard caches, activation caches, SAE metadata) records `Z_CONVENTION`, so a change of convention invalidates it
instead of serving stale numbers.
"""

Z_CONVENTION = "tl-processed-hook-z/1"
"""HookedTransformer's `hook_z` after `fold_ln`, `center_writing_weights` and `fold_value_biases`."""
