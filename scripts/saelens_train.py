"""Train one SAE with SAELens's own trainer on the embedded default model: the other side of
`scripts/side_by_side.py`. Runs in the side environment (SAELens 6.54 + TransformerLens 3.x, see
tests/reference/README.md), never in attnscope's; nothing from attnscope is imported.

    /work/refenv/bin/python scripts/saelens_train.py --rows ROWS.safetensors --layer 1 --arch topk --k 24 \
        --lr 1e-3 --tokens 1000000 --out DIR

ROWS holds `rows` [n, context] int64 token ids (BOS first), the same rows attnscope trains on. The SAE is written
by SAELens's `save_inference_model` into DIR, and DIR/timing.json gets the seconds spent loading and in the
trainer loop (`runner.run()`), wall and CPU, so the caller can put both sides' loop tokens/s in one table.
"""
# ruff: noqa: E402  (the environment is set before the libraries are imported, so they never reach a hub)

from __future__ import annotations

import os
import time

T0 = time.perf_counter()
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import argparse
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from safetensors.torch import load_file

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from transformer_lens import HookedTransformer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))
from tl_local import gpt2_copy_with_n_ctx, tl_from_local
DEFAULT_MODEL_DIR = REPO / "sae" / "zoo" / "default" / "model"


def load_processed(model_dir: Path) -> HookedTransformer:
    """The embedded (or any local GPT-2-layout) model as TL3's `from_pretrained` gives it, default processing."""
    tmp, _ = gpt2_copy_with_n_ctx(model_dir, prefix="saelens_side_")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(tmp))
        return tl_from_local(tmp, transformers.GPT2LMHeadModel, processed=True, tokenizer=tok)
    finally:
        shutil.rmtree(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", required=True, help="safetensors file with `rows` [n, context] int64")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="local GPT-2-layout HF dir")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--arch", choices=["topk", "standard"], default="topk")
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--l1", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--normalize", choices=["none", "expected_average_only_in"], default="none")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    rows = load_file(args.rows)["rows"].to(torch.int64)
    model = load_processed(Path(args.model))
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    d_in = n_heads * d_head
    common = dict(d_in=d_in, d_sae=args.expansion * d_in, reshape_activations="hook_z",
                  normalize_activations=args.normalize)
    if args.arch == "topk":
        sae_cfg = TopKTrainingSAEConfig(k=args.k, **common)
    else:
        sae_cfg = StandardTrainingSAEConfig(l1_coefficient=args.l1, **common)
    out = Path(args.out)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="attnscope-default",
        hook_name=f"blocks.{args.layer}.attn.hook_z",
        dataset_path="local-rows",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=rows.shape[1],
        prepend_bos=True,
        exclude_special_tokens=True,  # BOS z is one vector in every row; attnscope leaves it out too
        training_tokens=args.tokens,
        train_batch_size_tokens=args.batch,
        store_batch_size_prompts=32,
        n_batches_in_buffer=64,  # buffer = 64 x context tokens (SAELens needs >= batch)
        n_batches_for_norm_estimate=16,  # 16 training batches: ~65k tokens, like attnscope's first buffer (default 1000)
        lr=args.lr,
        lr_warm_up_steps=0,
        device="cpu",
        seed=args.seed,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(out),
        verbose=False,
    )
    dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist()})
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    t_loop, c_loop = time.perf_counter(), time.process_time()
    runner.run()
    t_end, c_end = time.perf_counter(), time.process_time()
    timing = {
        "import_s": t_start - T0,
        "setup_s": t_loop - t_start,
        "loop_s": t_end - t_loop,
        "tokens": args.tokens,
        "loop_tokens_per_s": args.tokens / (t_end - t_loop),
        "loop_cpu_s": c_end - c_loop,
        "loop_tokens_per_cpu_s": args.tokens / (c_end - c_loop),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
