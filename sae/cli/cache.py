"""`attnscope cache`: write hook_z of chosen layers to sharded safetensors, for training with no model pass."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae.cli.common import add_output_flags, console, emit, open_model, positive_int, job_progress


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cache", help="write hook_z activations to disk for training without a model pass",
        description="Run the model once over the corpus and write blocks.L.attn.hook_z of the chosen layers to "
        "OUT/shard_*.safetensors with OUT/manifest.json (model, hooks, z convention, tokens, corpus hash, dtype, "
        "shards). Then `attnscope train --activations OUT` trains from them, shuffled across shards.",
    )
    p.add_argument("--model", default="default", help="HF name or local dir (default: the embedded default)")
    p.add_argument("--corpus", default="default", help="'default' (embedded corpus), a .txt file or a dir")
    p.add_argument("--layers", default="all", help="comma list (0,1,2) or 'all' (default)")
    p.add_argument("--tokens", type=positive_int, default=2_000_000, help="tokens to cache (default 2,000,000; "
                   "fewer when the corpus is shorter)")
    p.add_argument("--context-size", type=positive_int, default=None, help="tokens per row (default 128 or the "
                   "model's context)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="storage type (default float16; float32 reproduces model-pass training exactly)")
    p.add_argument("--rows-per-shard", type=positive_int, default=1024, help="rows per shard file (default 1024)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--out", required=True, help="output directory (must not hold a cache yet)")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae.cli.train import parse_layers
    from sae.engine.activation_cache import write_cache
    from sae.zoo.token_cache import cached_token_rows

    model = open_model(args.model, args.device)
    layers = parse_layers(args.layers, model.n_layers)
    ctx = min(args.context_size or 128, model.n_ctx)
    rows = cached_token_rows(model, args.corpus, ctx, split="train")
    rows = rows[: max(1, -(-args.tokens // ctx))]
    out = Path(args.out).expanduser()
    with job_progress("cache", transient=False) as on_progress:
        manifest = write_cache(model, rows, layers, out, dtype=args.dtype, rows_per_shard=args.rows_per_shard,
                               corpus=args.corpus, on_progress=on_progress)
    data = {"path": str(out), **manifest.to_dict()}
    emit(args, data, _markdown)
    console.print(f"train from it with: attnscope train --activations {out} --out RUN_DIR")
    return 0


def _markdown(d: dict) -> str:
    return (f"activation cache {d['path']}: {d['model']}, layers {d['layers']}, {d['tokens']:,} tokens "
            f"({d['rows']:,} rows of {d['context_size']}), {d['dtype']}, {len(d['shards'])} shard(s), "
            f"corpus {d['corpus']!r} hash {d['corpus_hash']}")
