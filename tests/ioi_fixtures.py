"""A tiny random GPT-2 whose tokenizer was trained on IOI sentences, so every name is one token.

The shared tiny model's tokenizer knows only " Mary" and " John"; the corruptions that change names need four.
"""

from __future__ import annotations

from pathlib import Path


from sae.experiments import ioi_data


def ioi_text() -> list[str]:
    prompts = ioi_data.generate(1500, seed=123, split="all")
    lines = [p.full_text + "." for p in prompts]
    for p in prompts[:200]:
        for kind in ("abs_pos", "rel_pos", "alongside"):
            lines.append(ioi_data.corrupt(p, kind).full_text + ".")
    lines += [" ".join(ioi_data.NAMES)] * 20
    return lines


def build_ioi_model_dir(path: Path, n_layer: int = 3, d_model: int = 64, n_head: int = 4, n_ctx: int = 64, seed: int = 0) -> Path:
    """The shared tiny random GPT-2, with a tokenizer trained on IOI text so every name is one token."""
    from conftest import build_tiny_model_dir

    return build_tiny_model_dir(path, n_layer, d_model, n_head, n_ctx, seed, texts=ioi_text(), vocab_size=600)
