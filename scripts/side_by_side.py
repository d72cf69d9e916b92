"""attnscope against SAELens on the same machine, back to back, one run each: training speed and quality.

    PYTHONPATH=. .venv/bin/python scripts/side_by_side.py --side-python /work/refenv/bin/python \
        [--shapes default,gpt2-256] [--archs topk,standard] [--layers 1] [--tokens 1000000] [--json OUT.json]

For each shape, architecture and layer it trains one SAE with SAELens 6.54's own trainer
(`scripts/saelens_train.py`, run by the side environment's python; see tests/reference/README.md for how to
build it) and one with `attnscope train`, on the same token rows (attnscope's, tokenised once and handed to
SAELens pre-tokenised, as a cached dataset would be), batch 4096, context 128, warm-up 0, 8x wide, the issue's
settings (top-k k=24 lr 1e-3; standard L1 1.0 lr 1.2e-3 on raw z). Both SAEs are then scored by `attnscope eval`
on the same held-out tokens. On `gpt2-256` both sides train on z scaled to E|z| = sqrt(d_in)
(`expected_average_only_in`, each tool's own), because a random model's z is tiny and an L1 coefficient meant for
the default model's raw z would say nothing there. Whole-process seconds are the wall time of each training subprocess, imports
included; loop tokens/s is each trainer's own figure (SAELens: `runner.run()`; attnscope: the trainer loop).

Shapes: `default` is the embedded model (128 -> 1024); `gpt2-256` a 2-layer, 256-wide GPT-2 with random weights
(256 -> 2048) trained on random-word text, where throughput is what counts (its CE figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # each side's flags; the standard runs also get --normalize (see `normalisation`)
    "topk": {"attnscope": ["--architecture", "topk", "--k", "24", "--lr", "1e-3"],
             "saelens": ["--arch", "topk", "--k", "24", "--lr", "1e-3"], "label": "topk k=24, lr 1e-3"},
    "standard": {"attnscope": ["--architecture", "standard", "--l1", "1.0", "--lr", "1.2e-3"],
                 "saelens": ["--arch", "standard", "--l1", "1.0", "--lr", "1.2e-3"],
                 "label": "standard L1 1.0, lr 1.2e-3"},
}


def side_flags(arch: str, shape: str) -> dict:
    """SETTINGS plus the normalisation: raw z on the default shape, as the issue's table (attnscope's top-k keeps its
    default scaling, which a top-k SAE does not notice); scaled z on both sides on a random model."""
    s = dict(SETTINGS[arch])
    norm = "none" if shape == "default" else "expected_average_only_in"
    if arch == "standard" or norm != "none":
        s["attnscope"] = [*s["attnscope"], "--normalize", norm]
    s["saelens"] = [*s["saelens"], "--normalize", norm]
    if norm != "none":
        s["label"] += ", normalised z"
    return s


def attnscope_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench.main", *args]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"side_by_side: {' '.join(cmd[:4])} ... failed:\n{res.stderr[-2000:]}")
    return dt, res.stdout


def evaluate(sae_dir: Path, model: str, corpus: str, env: dict[str, str]) -> dict:
    _, out = timed(attnscope_cmd("eval", str(sae_dir), "--model", model, "--corpus", corpus, "--json"), env)
    return json.loads(out)[0]


def random_word_corpus(path: Path, vocab: int, n_words: int, seed: int) -> Path:
    rng = random.Random(seed)
    words = [f"t{rng.randrange(1, vocab)}" for _ in range(n_words)]
    path.write_text("\n".join(" ".join(words[i:i + 200]) for i in range(0, n_words, 200)) + "\n")
    return path


def prepare_shape(shape: str, work: Path, tokens: int) -> dict:
    """The model dir, train / eval corpora and the token rows file for one shape."""
    import torch
    from safetensors.torch import save_file

    from sae import zoo
    from sae.zoo.token_cache import cached_token_rows

    if shape == "default":
        model_arg, model_dir, train_corpus, eval_corpus = "default", str(zoo.DEFAULT_MODEL_DIR), "default", "default"
    elif shape == "gpt2-256":
        from sae.bench.training import random_gpt2_dir

        torch.manual_seed(0)  # the same random model every run
        d = random_gpt2_dir(work / "gpt2-256", n_layer=2, d_model=256, n_head=8, n_ctx=128, vocab=4096)
        model_arg = model_dir = str(d)
        train_corpus = str(random_word_corpus(work / "train.txt", 4096, int(tokens * 1.3), seed=0))
        eval_corpus = str(random_word_corpus(work / "heldout.txt", 4096, 80_000, seed=1))
    else:
        sys.exit(f"side_by_side: unknown shape {shape!r} (default, gpt2-256)")
    model = zoo.load_model(model_arg)
    rows = cached_token_rows(model, train_corpus, 128, "train")  # also warms attnscope's token cache
    rows_file = work / f"rows-{shape}.safetensors"
    save_file({"rows": rows.to(torch.int64).contiguous()}, str(rows_file))
    return {"model": model_arg, "model_dir": model_dir, "train_corpus": train_corpus, "eval_corpus": eval_corpus,
            "rows": str(rows_file), "d_in": model.n_heads * model.d_head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side-python", default="/work/refenv/bin/python", help="python of the SAELens side env")
    ap.add_argument("--shapes", default="default", help="comma list of default, gpt2-256")
    ap.add_argument("--archs", default="topk,standard")
    ap.add_argument("--layers", default="1", help="comma list of layers (gpt2-256 has 0 and 1)")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--work", default=None, help="keep models, corpora and SAEs here (default: a temp dir)")
    args = ap.parse_args()
    if not Path(args.side_python).exists():
        sys.exit(f"side_by_side: no side python at {args.side_python}; build it as tests/reference/README.md says")

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results = []
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes.split(","):
            prep = prepare_shape(shape, work, args.tokens)
            for arch in args.archs.split(","):
                for layer in [int(x) for x in args.layers.split(",")]:
                    s = side_flags(arch, shape)
                    sl_out = work / f"sl-{shape}-{arch}-{layer}"
                    sl_s, _ = timed([args.side_python, str(REPO / "scripts" / "saelens_train.py"), "--rows",
                                     prep["rows"], "--model", prep["model_dir"], "--layer", str(layer),
                                     "--tokens", str(args.tokens), "--out", str(sl_out), *s["saelens"]], env)
                    sl_timing = json.loads((sl_out / "timing.json").read_text())
                    as_out = work / f"as-{shape}-{arch}-{layer}"
                    as_s, as_stdout = timed(attnscope_cmd(
                        "train", "--model", prep["model"], "--corpus", prep["train_corpus"], "--layers", str(layer),
                        "--tokens", str(args.tokens), "--batch-size", "4096", "--context-size", "128",
                        "--warmup-steps", "0", "--expansion", "8", "--out", str(as_out), "--json", *s["attnscope"]),
                        env)
                    as_run = json.loads(as_stdout)
                    for side, secs, loop, sae_dir in (
                        ("SAELens 6.54", sl_s, sl_timing["loop_tokens_per_s"], sl_out),
                        ("attnscope", as_s, as_run["tokens_per_s"], as_out / f"blocks.{layer}.attn.hook_z"),
                    ):
                        m = evaluate(sae_dir, prep["model"], prep["eval_corpus"], env)
                        results.append({
                            "shape": shape, "d_in": prep["d_in"], "arch": arch, "label": s["label"], "layer": layer,
                            "side": side, "process_s": secs, "loop_tokens_per_s": loop,
                            **{k: m[k] for k in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction",
                                                 "kl_score")},
                        })
                        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: list[dict]) -> str:
    lines = ["| shape | layer | run | side | loop tok/s | whole process | L0 | EV | CE loss recovered | dead |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["shape"], r["arch"], r["layer"]): r for r in results if r["side"] != "attnscope"}
    for r in results:
        base = ref[(r["shape"], r["arch"], r["layer"])]
        loop = f"{r['loop_tokens_per_s'] / 1000:.1f}k"
        proc = f"{r['process_s']:.1f} s"
        if r is not base:
            loop += f" ({r['loop_tokens_per_s'] / base['loop_tokens_per_s']:.2f}x)"
            proc += f" ({base['process_s'] / r['process_s']:.2f}x)"
        lines.append(f"| {r['shape']} ({r['d_in']}->{8 * r['d_in']}) | {r['layer']} | {r['label']} | {r['side']} | "
                     f"{loop} | {proc} | {r['l0']:.0f} | {r['explained_variance']:.3f} | "
                     f"{r['ce_loss_recovered']:.3f} | {r['dead_fraction']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
