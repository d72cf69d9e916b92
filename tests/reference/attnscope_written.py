"""SAE directories written by attnscope's own `save_sae`, for SAELens to read (the other direction of issue 10.5).

`PYTHONPATH=. .venv/bin/python tests/reference/attnscope_written.py` (attnscope's environment) writes
`tests/reference/attnscope_written/<architecture>/`; then `make.py` (the side environment) loads each with SAELens's
`SAE.load_from_disk` and records what SAELens reads (metadata) and computes (encode / decode) in
`fixtures/saelens_reads_attnscope/`. `tests/engine/test_saelens_reference.py` checks that attnscope still writes these
exact files and that its own encode/decode equal SAELens's on them.
"""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "attnscope_written"
ARCHITECTURES = ("standard", "topk", "jumprelu")


def build(architecture: str):
    """A deterministic SAE (d_in 128 = 4 heads x 32, d_sae 96) with non-zero biases and, for jumprelu, thresholds."""
    from sae.engine.autoencoder import SAE, SAEConfig

    cfg = SAEConfig(
        d_in=128, d_sae=96, hook_name="blocks.1.attn.hook_z", architecture=architecture, model_name="attnscope-default",
        k=8 if architecture == "topk" else None, n_heads=4, context_size=128,
    )
    g = torch.Generator().manual_seed(1234 + ARCHITECTURES.index(architecture))
    sae = SAE(cfg, init=False)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(128, 96, generator=g) * 0.2)
        sae.W_dec.copy_(torch.randn(96, 128, generator=g) * 0.2)
        sae.b_enc.copy_(torch.randn(96, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(128, generator=g) * 0.1)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(96, generator=g) * 0.5)
    return sae


def write(root: Path = OUT) -> dict[str, Path]:
    from sae.engine.formats import save_sae

    return {arch: save_sae(build(arch), root / arch) for arch in ARCHITECTURES}


if __name__ == "__main__":
    for arch, path in write().items():
        print(arch, path)
