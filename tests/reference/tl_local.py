"""Loading a local GPT-2-layout HF directory into TransformerLens 3.x the way `HookedTransformer.from_pretrained`
does. Side environment only (TL 3.x): used by `make.py` and `scripts/saelens_train.py`; attnscope never imports it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from transformer_lens import HookedTransformer


def gpt2_copy_with_n_ctx(src: Path, prefix: str = "tl_local_") -> tuple[Path, dict]:
    """A temp copy of the files of `src` whose config.json adds n_ctx = n_positions, and that config.

    TL3's GPT-2 config conversion reads `hf_config.n_ctx`; transformers 5's GPT2Config only has it when config.json
    carries "n_ctx" (the official gpt2 config.json does; attnscope's do not). The caller removes the copy."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for f in Path(src).iterdir():
        if f.is_file():
            shutil.copy(f, tmp / f.name)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.setdefault("n_ctx", cfg["n_positions"])
    (tmp / "config.json").write_text(json.dumps(cfg))
    return tmp, cfg


def tl_from_local(hf_dir: Path, hf_model_cls, processed: bool, tokenizer=None) -> HookedTransformer:
    """Exactly the body of TL3 ``HookedTransformer.from_pretrained`` (or
    ``from_pretrained_no_processing`` when processed=False) minus the
    official-name lookup (``get_official_model_name`` rejects local dirs).

    A fresh float32 HF model is loaded each time: TL's conversion may alias HF
    parameters and its processing works in place.
    """
    hf_model = hf_model_cls.from_pretrained(str(hf_dir), dtype=torch.float32)
    hf_model.eval()
    cfg = tl_loading.get_pretrained_model_config(
        str(hf_dir),
        hf_cfg=hf_model.config.to_dict(),
        fold_ln=processed,
        device="cpu",
        dtype=torch.float32,
    )
    if tokenizer is None:
        cfg.tokenizer_name = None  # tiny random models ship no tokenizer
    state_dict = tl_loading.get_pretrained_state_dict(str(hf_dir), cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=processed,
        center_writing_weights=processed,
        center_unembed=processed,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    return model
