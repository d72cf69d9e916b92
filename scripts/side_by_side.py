"""attnscope against SAELens on the same machine, back to back: training speed and quality over several seeds.

    PYTHONPATH=. .venv/bin/python scripts/side_by_side.py --side-python /work/refenv/bin/python \
        [--shapes default,gpt2-256] [--archs topk,standard] [--layers 1] [--seeds 0,1,2] [--threads 1] \
        [--tokens 1000000] [--json OUT.json]

For each shape, architecture, layer and seed it trains one SAE with SAELens 6.54's own trainer
(`scripts/saelens_train.py`, run by the side environment's python; see tests/reference/README.md for how to
build it) and one with `attnscope train`, on the same token rows (attnscope's, tokenised once and handed to
SAELens pre-tokenised, as a cached dataset would be), batch 4096, context 128, warm-up 0, 8x wide, the issue's
settings (top-k k=24 lr 1e-3; standard L1 1.0 lr 1.2e-3 on raw z). Both SAEs are then scored by `attnscope eval`
on the same held-out tokens. On `gpt2-256` both sides train on z scaled to E|z| = sqrt(d_in)
(`expected_average_only_in`, each tool's own), because a random model's z is tiny and an L1 coefficient meant for
the default model's raw z would say nothing there.

Timing: every training runs alone, one after the other, with `--threads` torch threads on both sides (default 1,
so that a machine shared with other work gives each side the same single core) and at `--nice`. Both wall and CPU
seconds are recorded; the table reads CPU seconds, which another process on the machine does not inflate (with one
thread they are what the wall clock shows on an idle core). "Whole process" is the training subprocess from exec to
exit, imports, model load and save included (`getrusage` of the child); "loop" is each trainer's own loop
(SAELens: `runner.run()`; attnscope: the trainer loop, first buffer fill included on both sides). The table gives
the means over seeds (quality columns: mean, with the worst seed in brackets) and attnscope / SAELens ratios.

Shapes: `default` is the embedded model (128 -> 1024); `gpt2-256` a 2-layer, 256-wide GPT-2 with random weights
(256 -> 2048) trained on random-word text, where throughput is what counts (its CE figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
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


def timed(cmd: list[str], env: dict[str, str], nice: int = 0) -> tuple[float, float, str]:
    """Run `cmd` to its end; its wall seconds, CPU seconds (user + system, children included) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                         preexec_fn=(lambda: os.nice(nice)) if nice else None)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        sys.exit(f"side_by_side: {' '.join(cmd[:4])} ... failed:\n{res.stderr[-2000:]}")
    return dt, cpu, res.stdout


def evaluate(sae_dir: Path, model: str, corpus: str, env: dict[str, str]) -> dict:
    _, _, out = timed(attnscope_cmd("eval", str(sae_dir), "--model", model, "--corpus", corpus, "--json"), env)
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
    ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds; each side trains once per seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (OMP_NUM_THREADS)")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the training and evaluation processes")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--json", default=None, help="also write every figure here (written after each run)")
    ap.add_argument("--work", default=None, help="keep models, corpora and SAEs here (default: a temp dir)")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the table of an earlier --json file")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if not Path(args.side_python).exists():
        sys.exit(f"side_by_side: no side python at {args.side_python}; build it as tests/reference/README.md says")

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes.split(","):
            prep = prepare_shape(shape, work, args.tokens)
            for arch in args.archs.split(","):
                for layer in [int(x) for x in args.layers.split(",")]:
                    for seed in [int(x) for x in args.seeds.split(",")]:
                        results += train_pair(args, env, work, prep, shape, arch, layer, seed)
                        if args.json:
                            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def train_pair(args, env: dict[str, str], work: Path, prep: dict, shape: str, arch: str, layer: int,
               seed: int) -> list[dict]:
    """One SAELens run and one attnscope run with the same settings and seed, both scored by `attnscope eval`."""
    s = side_flags(arch, shape)
    tag = f"{shape}-{arch}-{layer}-s{seed}"
    sl_out = work / f"sl-{tag}"
    sl_wall, sl_cpu, _ = timed([args.side_python, str(REPO / "scripts" / "saelens_train.py"), "--rows", prep["rows"],
                                "--model", prep["model_dir"], "--layer", str(layer), "--tokens", str(args.tokens),
                                "--seed", str(seed), "--threads", str(args.threads), "--out", str(sl_out),
                                *s["saelens"]], env, args.nice)
    sl_timing = json.loads((sl_out / "timing.json").read_text())
    as_out = work / f"as-{tag}"
    as_wall, as_cpu, as_stdout = timed(attnscope_cmd(
        "train", "--model", prep["model"], "--corpus", prep["train_corpus"], "--layers", str(layer),
        "--tokens", str(args.tokens), "--batch-size", "4096", "--context-size", "128", "--warmup-steps", "0",
        "--expansion", "8", "--seed", str(seed), "--out", str(as_out), "--json", *s["attnscope"]), env, args.nice)
    as_run = json.loads(as_stdout)
    out = []
    for side, wall, cpu, loop_wall, loop_cpu, sae_dir in (
        ("SAELens 6.54", sl_wall, sl_cpu, sl_timing["loop_s"], sl_timing["loop_cpu_s"], sl_out),
        ("attnscope", as_wall, as_cpu, as_run["seconds"], as_run["loop_cpu_seconds"],
         as_out / f"blocks.{layer}.attn.hook_z"),
    ):
        m = evaluate(sae_dir, prep["model"], prep["eval_corpus"], env)
        out.append({
            "shape": shape, "d_in": prep["d_in"], "arch": arch, "label": s["label"], "layer": layer, "seed": seed,
            "side": side, "threads": args.threads, "process_s": wall, "process_cpu_s": cpu, "loop_s": loop_wall,
            "loop_cpu_s": loop_cpu, "loop_tokens_per_s": args.tokens / loop_wall,
            "loop_tokens_per_cpu_s": args.tokens / loop_cpu,
            **{k: m[k] for k in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "kl_score")},
        })
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def markdown(results: list[dict]) -> str:
    """Per shape, architecture, layer and side: means over seeds (worst seed in brackets for quality), ratios
    attnscope / SAELens for speed (loop tokens per CPU second; whole-process CPU seconds, SAELens over attnscope)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["shape"], r["arch"], r["layer"], r["side"]), []).append(r)

    def mean(rs: list[dict], k: str) -> float:
        return statistics.fmean(r[k] for r in rs)

    lines = ["| shape | layer | run | side | seeds | loop tok/CPU-s | whole process (CPU) | L0 | EV | "
             "CE loss recovered | dead |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (shape, arch, layer, side), rs in groups.items():
        base = groups.get((shape, arch, layer, "SAELens 6.54"), rs)
        loop = f"{mean(rs, 'loop_tokens_per_cpu_s') / 1000:.1f}k"
        proc = f"{mean(rs, 'process_cpu_s'):.1f} s"
        if rs is not base:
            loop += f" ({mean(rs, 'loop_tokens_per_cpu_s') / mean(base, 'loop_tokens_per_cpu_s'):.2f}x)"
            proc += f" ({mean(base, 'process_cpu_s') / mean(rs, 'process_cpu_s'):.2f}x)"
        ev = f"{mean(rs, 'explained_variance'):.3f} ({min(r['explained_variance'] for r in rs):.3f})"
        ce = f"{mean(rs, 'ce_loss_recovered'):.3f} ({min(r['ce_loss_recovered'] for r in rs):.3f})"
        dead = f"{mean(rs, 'dead_fraction'):.3f} ({max(r['dead_fraction'] for r in rs):.3f})"
        r0 = rs[0]
        lines.append(f"| {shape} ({r0['d_in']}->{8 * r0['d_in']}) | {layer} | {r0['label']} | {side} | {len(rs)} | "
                     f"{loop} | {proc} | {mean(rs, 'l0'):.0f} | {ev} | {ce} | {dead} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
