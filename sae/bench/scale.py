"""Every analysis at a model's scale, on random weights (`attnscope bench scale`).

Builds a GPT-2-architecture model with random weights (and the embedded default's byte-level BPE tokenizer, so
text, names and IOI prompts tokenise as they do on the default) and random SAEs of a named shape, all in a
temporary directory, then times each analysis the workbench and the CLI run. Speed does not depend on the
weights, with one exception handled here: a random SAE would fire half its latents on every token, so each
SAE's encoder bias is set, per latent, to the quantile of its pre-activations that makes it fire on
`l0 / d_sae` of the tokens (about `l0` firings per token, like a trained SAE).

Workloads are kept small where the full one would take long (few prompts, few tokens); every figure says its
workload, and `workloads` in the JSON lists them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from sae.engine.errors import AttnscopeError

@dataclass(frozen=True)
class Shape:
    """A model and SAE shape, with the workloads the bench runs at it."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    vocab: int
    n_ctx: int
    d_sae: int
    wide: dict[int, int] = field(default_factory=dict)  # layer -> d_sae where it differs
    l0: int = 32
    scan_tokens: int = 8192
    scan_batch_rows: int = 32
    n_induction: int = 32
    n_ioi: int = 32
    ioi_features: int = 4  # prompts of the `features` experiment (one forward per live feature)
    eval_rows: int = 16
    train_batch: int = 4096
    prompts: tuple[int, ...] = (16, 128, 1024)
    logit_sample: int = 512  # features per layer whose logit effects the scan's static part times (then scaled)

    def d_sae_of(self, layer: int) -> int:
        return self.wide.get(layer, self.d_sae)

    def describe(self) -> str:
        wide = "".join(f", {v} on layer {k}" for k, v in sorted(self.wide.items()))
        return (f"{self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads of {self.d_head}, vocab "
                f"{self.vocab}, n_ctx {self.n_ctx}; SAEs {self.n_heads * self.d_head} -> {self.d_sae}{wide}")


SHAPES: dict[str, Shape] = {
    # for tests: seconds
    "tiny": Shape("tiny", 2, 64, 2, 32, 2048, 64, 256, l0=8, scan_tokens=512, scan_batch_rows=8, n_induction=4,
                  n_ioi=4, ioi_features=1, eval_rows=2, train_batch=256, prompts=(16, 64)),
    # the embedded default's shape
    "toy": Shape("toy", 3, 128, 4, 32, 2048, 128, 1024, scan_tokens=65536),
    "mid": Shape("mid", 6, 512, 8, 64, 50257, 512, 8192, scan_tokens=8192, scan_batch_rows=16, n_induction=16,
                 n_ioi=16, ioi_features=2, eval_rows=8, prompts=(16, 128, 512)),
    # the paper's: GPT-2 Small with its attention-output SAEs
    "gpt2-small": Shape("gpt2-small", 12, 768, 12, 64, 50257, 1024, 24576, wide={5: 49152, 7: 49152},
                        scan_tokens=2048, scan_batch_rows=4, n_induction=4, n_ioi=2, ioi_features=1, eval_rows=2,
                        train_batch=512, logit_sample=128),
}


# ---- the random model and SAEs ----------------------------------------------------------------------------


def random_model_dir(path: Path, shape: Shape, seed: int = 0) -> Path:
    """A GPT-2 of `shape` with random weights in Hugging Face layout, with the embedded default's tokenizer
    (its ids are all below the vocabulary size; the extra embedding rows are never produced by text)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sae.zoo import DEFAULT_MODEL_DIR

    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(DEFAULT_MODEL_DIR / name, path / name)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=shape.n_layers, n_embd=shape.d_model, n_head=shape.n_heads, n_positions=shape.n_ctx,
                     vocab_size=shape.vocab, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def random_texts(n_docs: int, words: int, seed: int = 0, vocab: int = 2048) -> list[str]:
    """`n_docs` texts of about `words` tokens each: random token ids of the default tokenizer, decoded."""
    from tokenizers import Tokenizer

    from sae.zoo import DEFAULT_MODEL_DIR

    tok = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    g = torch.Generator().manual_seed(seed)
    return [tok.decode(torch.randint(1, vocab, (words,), generator=g).tolist()) for _ in range(n_docs)]


@torch.no_grad()
def random_saes(model: Any, shape: Shape, rows: torch.Tensor, seed: int = 0) -> dict[int, Any]:
    """One random standard SAE per layer (`shape.d_sae_of`), each latent's encoder bias calibrated on the z of
    `rows [n, pos]` (BOS left out, as the scan does) so that it fires on about `l0 / d_sae` of the tokens.

    Per latent, the mean m and standard deviation s of its pre-activation over those tokens; one multiple c per
    layer, the `1 - l0 / d_sae` quantile of `(pre - m) / s` over every (token, latent) pair; the bias is
    `-(m + c s)`. A few hundred tokens do (an exact quantile per latent would need many times `d_sae / l0` tokens,
    over a TFLOP of encoding at gpt2-small)."""
    from sae.engine.autoencoder import SAE, SAEConfig
    from sae.engine.models import z_hook_name

    torch.manual_seed(seed)
    zs = model.capture_z(rows.to(model.device), range(model.n_layers))
    saes = {}
    for layer in range(model.n_layers):
        cfg = SAEConfig(d_in=model.d_z, d_sae=shape.d_sae_of(layer), hook_name=z_hook_name(layer),
                        n_heads=model.n_heads, model_name=model.name)
        sae = SAE(cfg).to(model.device)
        sae.cfg.extra["layer"] = layer
        saes[layer] = calibrate(sae, zs[layer][:, 1:].reshape(-1, model.d_z).float(), shape.l0).eval()
    return saes


@torch.no_grad()
def calibrate(sae: Any, z: torch.Tensor, l0: float) -> Any:
    """Set `sae.b_enc` (b_dec zero) so that each latent fires on about `l0 / d_sae` of tokens like `z [N, d_in]`
    (see `random_saes`): the mean and spread per latent from the first half of the tokens, the multiple c from the
    second half (a quantile taken on the tokens that gave the spread would come out low); returns the SAE."""
    half = max(2, z.shape[0] // 2)
    pre = z[:half] @ sae.W_enc  # [N/2, d_sae]
    mean, std = pre.mean(0), pre.std(0).clamp_min(1e-12)
    del pre
    score = z[half:] @ sae.W_enc if z.shape[0] > half else z[:half] @ sae.W_enc
    score.sub_(mean).div_(std)  # standardised, in place: one [N/2, d_sae] buffer
    flat = score.flatten()
    above = max(1, min(flat.numel() - 1, int(round(flat.numel() * l0 / sae.cfg.d_sae))))
    c = flat.kthvalue(flat.numel() - above).values  # `above` pairs lie over it
    sae.b_enc.copy_(-(mean + c * std))
    return sae


# ---- measuring ----------------------------------------------------------------------------------------------


class ForwardCounter:
    """Counts model forward passes (calls of the embedding) while active."""

    def __init__(self, model: Any) -> None:
        self.model, self.n, self._h = model, 0, None

    def __enter__(self) -> "ForwardCounter":
        self.n = 0

        def bump(*_: Any) -> None:
            self.n += 1

        self._h = self.model.bridge.embed.register_forward_pre_hook(bump)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._h is not None:
            self._h.remove()


_SYNC = [False]  # a CUDA run: wait for the device before reading the clock


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    if _SYNC[0]:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if _SYNC[0]:
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


@contextmanager
def _patched(
    obj: Any, name: str, timer: dict[str, float], calls: dict[str, list[tuple[float, float]]] | None = None
) -> Iterator[None]:
    """Wrap `obj.name` so that the seconds spent in it add up in `timer[name]` (and each call's (start, end) goes
    into `calls[name]`)."""
    orig = getattr(obj, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            end = time.perf_counter()
            timer[name] = timer.get(name, 0.0) + end - t
            if calls is not None:
                calls.setdefault(name, []).append((t, end))

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        setattr(obj, name, orig)


def prompt_of(model: Any, n_tokens: int, seed: int = 0) -> str:
    """A text of about `n_tokens` tokens (BOS included) for `model`'s tokenizer."""
    text = random_texts(1, n_tokens * 2, seed)[0]
    ids = model.encode(text)[: max(1, n_tokens - 1)]
    return model.tokenizer.decode(ids)


def rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with the dependencies
        return None


def sae_bytes(saes: dict[int, Any], dtype: torch.dtype) -> int:
    """Resident bytes of the SAEs' parameters in `dtype`."""
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(p.numel() * size for s in saes.values() for p in s.parameters())


# ---- the benchmark ----------------------------------------------------------------------------------------


def bench_scale(shape_name: str = "toy", on_stage: Callable[[str], None] | None = None,
                workdir: Path | None = None, device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Time every analysis at `shape_name` (a key of `SHAPES`); returns the figures as a JSON-ready dict.

    Everything is written under a temporary directory (or `workdir`), which also serves as the dashboard and
    analysis cache for the run ($ATTNSCOPE_CACHE_DIR is pointed there while it runs). `threads`: torch's CPU
    threads for the run (default: torch's own choice)."""
    shape = SHAPES[shape_name]
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    marks: list[tuple[str, float]] = []

    def say(stage: str) -> None:  # each stage's wall time goes into the result's `stages_s`
        marks.append((stage, time.perf_counter()))
        if on_stage is not None:
            on_stage(stage)

    tmp_ctx = tempfile.TemporaryDirectory(prefix="attnscope-scale-") if workdir is None else None
    root = Path(tmp_ctx.name) if tmp_ctx is not None else Path(workdir)
    old_env = {k: os.environ.get(k) for k in ("ATTNSCOPE_CACHE_DIR", "ATTNSCOPE_CACHE")}
    os.environ["ATTNSCOPE_CACHE_DIR"] = str(root / "cache")
    os.environ["ATTNSCOPE_CACHE"] = "off"
    try:
        res = _run(shape, root, say, device)
        ends = [t for _, t in marks[1:]] + [time.perf_counter()]
        res["stages_s"] = {name: end - t for (name, t), end in zip(marks, ends)}
        return res
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
        torch.set_num_threads(old_threads)


def _run(shape: Shape, root: Path, say: Callable[[str], None], device: str = "cpu") -> dict[str, Any]:
    from sae.engine.models import quiet_transformers, load_model, resolve_device

    quiet_transformers()
    t_all = time.perf_counter()
    res: dict[str, Any] = {
        "shape": shape.name, "shape_text": shape.describe(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "device": str(resolve_device(device)),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timings": {}, "workloads": {}, "targets": {},
    }
    T, W = res["timings"], res["workloads"]
    say("building a random model")
    rss0 = rss_bytes()
    t_make, path = _timed(lambda: random_model_dir(root / "model", shape))
    t_load, model = _timed(lambda: load_model(str(path), device=device, display_name=f"random {shape.name}"))
    _SYNC[0] = model.device.type == "cuda"
    T["model_write_s"], T["model_load_s"] = t_make, t_load
    context = min(128, model.n_ctx)
    docs = random_texts(max(8, shape.scan_tokens // 256 + 4), 400, seed=1)
    from sae.engine.activations import corpus_token_rows

    rows = corpus_token_rows(model, docs, context, max_rows=max(8, shape.scan_tokens // context + 2))
    say("random SAEs, calibrated")
    calib = rows[: max(2, min(16, 4096 // context))]
    rss1 = rss_bytes()
    t_sae, saes = _timed(lambda: random_saes(model, shape, calib))
    T["saes_make_s"] = t_sae
    rss2 = rss_bytes()
    res["memory"] = {
        "sae_fp32_bytes": sae_bytes(saes, torch.float32), "sae_bf16_bytes": sae_bytes(saes, torch.bfloat16),
        "model_fp32_bytes": sum(p.numel() * 4 for p in model.bridge.parameters()),
        "rss_model_bytes": (rss1 - rss0) if rss0 and rss1 else None,
        "rss_saes_bytes": (rss2 - rss1) if rss1 and rss2 else None,
    }
    layers = list(range(model.n_layers))
    mid = layers[len(layers) // 2]
    last = layers[-1]

    # heatmap: prompt features of every layer as the explore screen asks them (one model forward for the prompt,
    # then each layer's SAE encode), next to its floor: its FLOPs at the matmul rate measured here
    say("heatmaps")
    res["matmul_gflops"] = matmul_gflops(model.device, model.d_z, shape.d_sae, 128)
    heatmap_sweep(model, saes, prompt_of(model, min(16, model.n_ctx), seed=16))  # warm-up
    heat = {}
    for n in shape.prompts:
        n = min(n, model.n_ctx)
        heat[str(n)] = heatmap_figures(model, saes, prompt_of(model, n, seed=n), res["matmul_gflops"])
    T["heatmap"] = heat
    W["heatmap"] = ("one model forward per prompt up to the last layer's attention, then each layer's SAE encode and "
                    "heatmap columns, as the explore screen asks them; floor: the model's and the encodes' FLOPs at "
                    "the measured matmul rate")

    # traces at depth 1..3 from the last layer, with the forward passes they cost
    from sae.analysis.trace import trace_feature

    say("traces")
    prompt = prompt_of(model, min(128, model.n_ctx), seed=3)
    feat = _strongest_feature(model, saes[last], prompt, last)
    traces = {}
    for depth in (1, 2, 3):
        with ForwardCounter(model) as fc:
            dt, tr = _timed(lambda depth=depth: trace_feature(model, saes, prompt, last, feat, depth=depth, keep=5))
        traces[str(depth)] = {"seconds": dt, "forwards": fc.n, "nodes": sum(1 for _ in tr.root.walk())}
    T["trace"] = traces
    W["trace"] = f"a {min(128, model.n_ctx)}-token prompt, layer {last}, 5 children per node"

    # the dashboard scan of every layer in one pass (what the first launch builds)
    say("dashboard scan")
    T["scan"] = _scan(model, saes, docs, shape)
    W["scan"] = (f"{T['scan']['tokens']:,} held-out tokens, {shape.scan_batch_rows} rows of {context} a batch "
                 f"({T['scan']['batches']} batches folded into each layer's scan in {T['scan']['folds']} updates), "
                 f"all {model.n_layers} layers in one pass; logit effects timed on {shape.logit_sample} features per "
                 "layer and scaled")

    # head survey, roles, study: read the dashboards just built, with the induction test on the model
    from sae.analysis import cache
    from sae.analysis import dashboards as dash
    from sae.analysis.study import study_layer

    dirs = {layer: dash.dashboard_dir(model, saes[layer], layer) for layer in layers}
    say("head survey (with each layer's roles)")
    reps: list[Any] = []
    roles_timer: dict[str, float] = {}
    orig_roles = cache.compute_roles

    def roles_kept(*a: Any, **k: Any) -> Any:  # the survey's own roles, timed apart and kept for their count
        reps.append(orig_roles(*a, **k))
        return reps[-1]

    cache.compute_roles = roles_kept  # type: ignore[assignment]
    try:
        with ForwardCounter(model) as fc, _patched(cache, "compute_roles", roles_timer):
            dt, _ = _timed(lambda: cache.head_survey(model, saes, dirs))  # cold: computes and stores
    finally:
        cache.compute_roles = orig_roles  # type: ignore[assignment]
    T["head_survey"] = {"seconds": dt, "forwards": fc.n}
    say("head survey from the cache")
    T["head_survey"]["cached_s"], _ = _timed(lambda: cache.head_survey(model, saes, dirs))
    T["roles"] = {"seconds": roles_timer.get("compute_roles", 0.0), "candidates": sum(len(r.candidates) for r in reps),
                  "layers": len(reps)}
    W["roles"] = "every layer's roles with the induction test of their candidates, timed inside the cold head survey"
    say("study sample")
    dt, _ = _timed(lambda: study_layer(model, saes[mid], mid, 20, 0))
    T["study"] = {"seconds": dt, "layer": mid}
    W["study"] = "20 sampled features of the middle layer, induction candidates tested"

    # circuit experiments and evaluation, small workloads
    from sae.experiments import induction, ioi
    from sae.experiments.ioi_data import EXPERIMENTS

    say("induction")
    seq = min(128, model.n_ctx)
    dt, _ = _timed(lambda: induction.synthetic_induction(model, n=shape.n_induction, seq_len=seq))
    T["induction"] = {"seconds": dt}
    W["induction"] = f"{shape.n_induction} sequences of {seq} per prefix length"
    say("IOI")
    data = ioi.build_dataset(model, shape.n_ioi, seed=0)
    few = ioi.build_dataset(model, shape.ioi_features, seed=0)
    ioi_t: dict[str, Any] = {}
    for name in EXPERIMENTS:
        kw: dict[str, Any] = {"layer": mid}
        if name == "path":
            kw["features"] = [0]
            kw["layer"] = max(0, min(mid, model.n_layers - 2))
        prompts = few if name == "features" else data  # one forward per live feature: fewer prompts
        try:
            with ForwardCounter(model) as fc:
                dt, _ = _timed(lambda name=name, kw=kw, prompts=prompts: ioi.run_experiment(name, model, prompts, saes, **kw))
        except AttnscopeError as exc:  # an experiment the shape cannot run (no later layer, ...)
            ioi_t[name] = None
            res.setdefault("skipped", {})[f"ioi {name}"] = str(exc)
            continue
        ioi_t[name] = {"seconds": dt, "forwards": fc.n, "prompts": len(prompts)}
    T["ioi"] = ioi_t
    W["ioi"] = (f"{shape.n_ioi} prompts ({shape.ioi_features} for `features`, which ablates each live feature in "
                f"its own forwards); SAE layer {mid}; `path` follows feature 0")
    say("eval")
    from sae.engine.metrics import evaluate_saes

    ev_rows = rows[: shape.eval_rows]
    dt, _ = _timed(lambda: evaluate_saes(model, saes, ev_rows, batch_rows=min(8, shape.eval_rows)))
    T["eval"] = {"seconds": dt, "tokens": int(ev_rows.numel()),
                 "tokens_per_s": ev_rows.numel() / dt if dt else None}
    W["eval"] = f"{ev_rows.shape[0]} rows of {ev_rows.shape[1]} tokens, all {model.n_layers} SAEs"

    say("training step")
    from sae.bench.training import sae_step_efficiency

    widest = max(shape.d_sae_of(x) for x in layers)
    res["train_step"] = dict(sae_step_efficiency(model.d_z, shape.d_sae, shape.train_batch, model.device, reps=1),
                             d_sae=shape.d_sae, batch=shape.train_batch)
    res["train_step"]["widest_d_sae"] = widest

    _targets(res, shape)
    if model.device.type == "cuda":
        res["memory"]["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(model.device))
    res["total_s"] = time.perf_counter() - t_all
    return res


def matmul_gflops(device: torch.device, d_in: int, d_sae: int, rows: int, reps: int = 5) -> float:
    """GFLOP/s of a `[rows, d_in] x [d_in, d_sae]` fp32 matmul (the SAE encode's own shape), best of `reps`."""
    a = torch.randn(rows, d_in, device=device)
    b = torch.randn(d_in, d_sae, device=device)
    best = min(_timed(lambda: a @ b)[0] for _ in range(reps + 1))
    return 2.0 * rows * d_in * d_sae / best / 1e9


def heatmap_gflop(model: Any, saes: dict[int, Any], n_tokens: int) -> tuple[float, float]:
    """(model, SAE encode) GFLOP of the heatmap of an `n_tokens` prompt at every layer of `saes`: every block below
    the last SAE layer in full (q/k/v, scores, pattern x values, output projection, MLP) and that layer's q/k/v and
    attention; one `[n, d_in] x [d_in, d_sae]` encode per SAE. Norms, softmax and the like are left out."""
    last = max(saes)
    m, dz, n = model.d_model, model.d_z, n_tokens
    d_mlp = int(getattr(model.bridge.cfg, "d_mlp", 0) or 4 * m) if model.bridge is not None else 4 * m
    attn = 2 * n * 3 * m * dz + 2 * 2 * n * n * dz  # q/k/v, q k^T and pattern v (the whole square, as computed)
    block = attn + 2 * n * dz * m + 2 * 2 * n * m * d_mlp
    model_flop = last * block + attn
    enc_flop = sum(2 * n * s.cfg.d_in * s.cfg.d_sae for s in saes.values())
    return model_flop / 1e9, enc_flop / 1e9


def heatmap_sweep(model: Any, saes: dict[int, Any], prompt: str, columns: int = 24) -> tuple[float, list[float]]:
    """What the explore screen costs for `prompt` at every layer: one model forward (sae.analysis.dfa.run_prompt),
    then per layer the SAE encode and the heatmap's columns and values (the workbench's `prompt_view`, with no
    feature dense). Returns (forward seconds, [seconds per layer])."""
    from sae.analysis import dfa

    layers = sorted(saes)
    t_fwd, run = _timed(lambda: dfa.run_prompt(model, prompt, layers))
    per = []
    for layer in layers:
        def one(layer: int = layer) -> Any:
            res = run.features(saes[layer], layer, top_k=8)
            cols = res.top_features(columns, last=torch.zeros(saes[layer].cfg.d_sae, dtype=torch.bool))
            return res.acts[:, cols].float().cpu()

        per.append(_timed(one)[0])
    return t_fwd, per


def heatmap_figures(model: Any, saes: dict[int, Any], prompt: str, gflops: float) -> dict[str, Any]:
    """The heatmap of `prompt` over every layer, timed, with its FLOPs and the floor they set at `gflops`."""
    n = int(model.to_tokens(prompt)[0].shape[1])
    t_fwd, per = heatmap_sweep(model, saes, prompt)
    model_g, enc_g = heatmap_gflop(model, saes, n)
    total = t_fwd + sum(per)
    floor = (model_g + enc_g) / gflops
    return {"tokens": n, "all_layers_s": total, "forward_s": t_fwd, "encode_s": sum(per),
            "first_layer_s": t_fwd + per[0], "max_layer_s": max(per), "model_gflop": model_g, "encode_gflop": enc_g,
            "floor_s": floor, "vs_floor": total / floor}


def _strongest_feature(model: Any, sae: Any, prompt: str, layer: int) -> int:
    tokens, _ = model.to_tokens(prompt)
    z = model.capture_z(tokens, [layer])[layer][0]
    with torch.no_grad():
        acts = sae.encode(z)
    return int(acts[1:].amax(0).argmax()) if acts.shape[0] > 1 else 0


def _scan(model: Any, saes: dict[int, Any], docs: list[str], shape: Shape) -> dict[str, Any]:
    """The all-layers dashboard build, split into model forward, SAE encode, bookkeeping and the rest."""
    from sae.analysis.dashboards import build as build_mod
    from sae.analysis.dashboards import scan as scan_mod

    timer: dict[str, float] = {}
    calls: dict[str, list[tuple[float, float]]] = {}
    # the static part's logit effects: timed on `shape.logit_sample` features, the rest of the layer given zeros
    # (scaled up)
    orig_logits = build_mod.logit_effects
    m = shape.logit_sample

    def sampled_logits(model: Any, sae: Any, layer: int, n: int = 10, chunk: int = 512) -> dict[str, torch.Tensor]:
        from sae.engine.autoencoder import SAE

        d = sae.cfg.d_sae
        part = SAE(type(sae.cfg)(**{**sae.cfg.__dict__, "d_sae": min(m, d)}), init=False)
        part.W_dec = torch.nn.Parameter(sae.W_dec[: min(m, d)].detach())
        t = time.perf_counter()
        got = orig_logits(model, part, layer, n, chunk)
        timer["logit_effects_est"] = timer.get("logit_effects_est", 0.0) + (time.perf_counter() - t) * d / min(m, d)
        return {k: torch.cat([v, v.new_zeros(d - v.shape[0], v.shape[1])]) for k, v in got.items()}

    spec = build_mod.DashboardSpec(n_tokens=shape.scan_tokens, context_size=min(128, model.n_ctx))
    build_mod.logit_effects = sampled_logits  # type: ignore[assignment]
    try:
        with _patched(build_mod, "capture_until_z", timer, calls), _patched(build_mod, "encode_acts", timer, calls), \
                _patched(scan_mod.DashboardScan, "update", timer, calls), _patched(build_mod, "finish_scans", timer, calls):
            t = time.perf_counter()
            res = build_mod.build_layers(model, saes, spec, docs=docs, batch_rows=shape.scan_batch_rows, force=True,
                                         checkpoint_s=1e9)
            total = time.perf_counter() - t
    finally:
        build_mod.logit_effects = orig_logits  # type: ignore[assignment]
    first = res[min(res)]
    scan_s = first.scan_seconds
    model_s = timer.get("capture_until_z", 0.0)
    enc_s = timer.get("encode_acts", 0.0)
    book_s = timer.get("update", 0.0) + timer.get("finish_scans", 0.0)  # finish: the last fold's DFA
    # the second half of the scan: each feature's top and sample slots are full by then, so few firings still
    # enter them (the first batches fill every slot: that cost does not grow with the corpus). Each layer's scan
    # folds in several model batches per update: the split is after the last update of the first half of the
    # folds, and the batches captured after it are the ones the later updates fold in
    ups = calls.get("update", [])
    folds = len(ups) // len(saes)
    split = ups[(folds // 2) * len(saes) - 1][1] if folds >= 2 else -math.inf
    late = {k: sum(e - t for t, e in v if t >= split) for k, v in calls.items()}
    late_book = late.get("update", 0.0) + late.get("finish_scans", 0.0)
    late_total = late.get("capture_until_z", 0.0) + late.get("encode_acts", 0.0) + late_book
    return {
        "tokens": first.n_tokens, "scan_s": scan_s, "batches": len(calls.get("capture_until_z", [])), "folds": folds,
        "late_bookkeeping_share": late_book / late_total if late_total else None, "tokens_per_s": first.n_tokens / scan_s if scan_s else None,
        "model_s": model_s, "encode_s": enc_s, "bookkeeping_s": book_s,
        "bookkeeping_share": book_s / scan_s if scan_s else None,
        "outside_model_encode_share": (scan_s - model_s - enc_s) / scan_s if scan_s else None,
        "static_s": total - scan_s, "logit_effects_full_s": timer.get("logit_effects_est", 0.0),
    }


def _targets(res: dict[str, Any], shape: Shape) -> None:
    """The issue's targets, each with its figure and whether it is met."""
    T, out = res["timings"], res["targets"]
    sc = T["scan"]
    out["scan bookkeeping <= 25% of the scan"] = {"value": sc["bookkeeping_share"],
                                                  "met": sc["bookkeeping_share"] is not None and sc["bookkeeping_share"] <= 0.25}
    d2 = T["trace"]["2"]["forwards"]
    out["depth-2 trace <= 10 model forwards"] = {"value": d2, "met": d2 <= 10}
    if shape.name == "toy":
        hs = T["head_survey"]["seconds"]
        out["toy head survey < 5 s"] = {"value": hs, "met": hs < 5}
        c = T["head_survey"].get("cached_s")
        out["toy head survey from cache < 0.5 s"] = {"value": c, "met": c is not None and c < 0.5}
    if shape.name == "gpt2-small":
        h = T["heatmap"].get("128", {})
        t, floor = h.get("all_layers_s"), h.get("floor_s")
        out["gpt2-small heatmap, 128 tokens, all layers < 1 s"] = {
            "value": t, "met": t is not None and t < 1, "floor_s": floor,
            "below_floor": floor is not None and floor > 1,  # 1 s is less than the FLOPs take at this matmul rate
            "vs_floor": h.get("vs_floor")}


# ---- printing ----------------------------------------------------------------------------------------------


def _gb(b: float | None) -> str:
    if b is None:
        return "–"
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"


def table_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(measurement, value) rows of the bench's table."""
    T, W, M = res["timings"], res["workloads"], res["memory"]
    rows: list[tuple[str, str]] = [
        ("model: write random weights / load", f"{T['model_write_s']:.1f} s / {T['model_load_s']:.1f} s"),
    ]
    for n, h in T["heatmap"].items():
        rows.append((f"heatmap, {h['tokens']}-token prompt, all layers: time / floor (ratio)",
                     f"{h['all_layers_s']:.3g} s / {h['floor_s']:.3g} s ({h['vs_floor']:.1f}x)"))
        rows.append(("  one forward / first layer / a layer switch (slowest)",
                     f"{h['forward_s']:.2f} / {h['first_layer_s']:.2f} / {h['max_layer_s']:.2f} s"))
    rows.append(("  floor: model + encode GFLOP at the measured matmul rate",
                 "; ".join(f"{h['tokens']}: {h['model_gflop']:.3g} + {h['encode_gflop']:.3g}" for h in T["heatmap"].values())
                 + f" GFLOP at {res['matmul_gflops']:.0f} GFLOP/s"))
    for d, t in T["trace"].items():
        rows.append((f"trace depth {d} ({t['nodes']} nodes)", f"{t['seconds']:.2f} s, {t['forwards']} forwards"))
    sc = T["scan"]
    rows += [
        (f"dashboard scan, all layers ({sc['tokens']:,} tokens)", f"{sc['tokens_per_s']:,.0f} tokens/s ({sc['scan_s']:.1f} s)"),
        ("  model forward / SAE encode / bookkeeping",
         f"{sc['model_s']:.1f} / {sc['encode_s']:.1f} / {sc['bookkeeping_s']:.1f} s"),
        ("  bookkeeping share; outside model + encode", f"{sc['bookkeeping_share']:.0%}; {sc['outside_model_encode_share']:.0%}"),
        ("  bookkeeping share over the second half of the scan", f"{sc['late_bookkeeping_share']:.0%}"),
        ("  static part (files, head shares; logit effects scaled)", f"{sc['static_s']:.1f} s (logit effects {sc['logit_effects_full_s']:.1f} s)"),
    ]
    hs = T["head_survey"]
    cached = "no cache" if hs.get("cached_s") is None else f"{hs['cached_s']:.3f} s"
    rows += [
        ("head survey, all layers (cold; from cache)", f"{hs['seconds']:.1f} s, {hs['forwards']} forwards; {cached}"),
        (f"roles, all layers ({T['roles']['candidates']} induction candidates)", f"{T['roles']['seconds']:.1f} s"),
        (f"study sample (layer {T['study']['layer']}, 20 features)", f"{T['study']['seconds']:.1f} s"),
        (f"induction ({W['induction']})", f"{T['induction']['seconds']:.1f} s"),
    ]
    rows += [(f"IOI {k}" + ("" if v is None else f" ({v['prompts']} prompts)"),
              "skipped" if v is None else f"{v['seconds']:.1f} s, {v['forwards']} forwards") for k, v in T["ioi"].items()]
    ev = T["eval"]
    rows += [
        (f"eval ({W['eval']})", f"{ev['seconds']:.1f} s ({ev['tokens_per_s']:,.0f} tokens/s)"),
        ("SAEs resident: fp32 / bf16", f"{_gb(M['sae_fp32_bytes'])} / {_gb(M['sae_bf16_bytes'])}"),
        ("model resident (fp32)", _gb(M["model_fp32_bytes"])),
    ]
    ts = res["train_step"]
    rows.append((f"training step {ts['batch']} x {ts['d_sae']} (vs plain matmul)",
                 f"{ts['step_s']:.2f} s, {ts['step_gflops']:.1f} / {ts['matmul_gflops']:.1f} GFLOP/s = {ts['fraction_of_matmul']:.2f}"))
    for name, t in res["targets"].items():
        v = t["value"]
        shown = "–" if v is None else (f"{v:.0%}" if "%" in name else f"{v:.3g}")
        note = ""
        if t.get("below_floor"):
            note = f" (the target is below this CPU's floor, {t['floor_s']:.2f} s; {t['vs_floor']:.1f}x the floor)"
        elif t.get("floor_s") is not None:
            note = f" ({t['vs_floor']:.1f}x the floor, {t['floor_s']:.2f} s)"
        rows.append((f"target: {name}", f"{shown} {'met' if t['met'] else 'NOT met'}{note}"))
    rows.append(("whole bench", f"{res['total_s']:.0f} s"))
    return rows
