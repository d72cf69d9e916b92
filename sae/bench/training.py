"""Measuring SAE-training throughput on this machine (`attnscope bench train`).

Every number is steady-state: the shuffle buffer is sized to two batches, so each step runs exactly one model
pass for `batch_size` fresh tokens plus the SAE step(s), as a long run does on average. Throughput does not
depend on the model's weights, so shapes can be measured on random models.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from sae.engine.training.loop import (
    TrainConfig,
    Trainer,
    make_optimizer,
    remove_parallel_grad,
)


def random_gpt2_dir(path: Path, n_layer: int, d_model: int, n_head: int, n_ctx: int, vocab: int) -> Path:
    """A GPT-2-architecture model with random weights and a placeholder word-level tokenizer, in HF layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(path)
    cfg = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=n_ctx, vocab_size=vocab,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def _random_rows(model, n_rows: int, context: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, model.d_vocab, (n_rows, context), generator=g)
    rows[:, 0] = model.bos_token_id
    return rows


def _time_training(model, rows: torch.Tensor, layers: list[int], d_sae: int, batch_size: int, steps: int,
                   warmup: int, autocast: bool, architecture: str = "standard", k: int = 32,
                   prefetch: int = 0) -> float:
    """Seconds for `steps` steady-state training steps (after `warmup` steps), all `layers` in one pass."""
    cfg = TrainConfig(
        layers=layers, architecture=architecture, k=k, d_sae=d_sae, batch_size=batch_size, context_size=rows.shape[1],
        total_tokens=batch_size * (steps + warmup), rows_per_pass=max(1, batch_size // rows.shape[1]),
        buffer_batches=2, warmup_steps=10, checkpoint_every=0, log_every=0, resample_every=0, autocast=autocast,
        prefetch=prefetch,
    )
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, rows, cfg, tmp)
        original = trainer.buffer.next_batch

        def timed_next() -> torch.Tensor:
            if trainer.step == warmup:
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                marks["start"] = time.perf_counter()
            return original()

        trainer.buffer.next_batch = timed_next  # type: ignore[method-assign]
        trainer.write_checkpoint = dict  # type: ignore[method-assign]  # nothing written while timing
        trainer.run()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - marks["start"]


def _time_model_pass(model, rows: torch.Tensor, layers: list[int], batch_size: int, reps: int, autocast: bool) -> float:
    from sae.engine.activations import ZSource

    src = ZSource(model, rows, layers, max(1, batch_size // rows.shape[1]), 0,
                  torch.bfloat16 if autocast and model.device.type == "cuda" else None)
    src.next_chunk()
    t = time.perf_counter()
    for _ in range(reps):
        src.next_chunk()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def sae_step_efficiency(d_in: int, d_sae: int, batch_size: int, device: torch.device, reps: int = 5,
                        architecture: str = "standard", k: int = 32) -> dict[str, float]:
    """Achieved FLOP/s of one SAE step (the loss and its gradients, Adam, the decoder constraint) against a plain
    `[B, d_in] x [d_in, d_sae]` matmul on the same device. The step is counted as five such matmuls (what a dense
    implementation does) for both architectures, so a top-k step that decodes through only its k active rows can
    score above 1: the fraction is then "dense-equivalent"."""
    from sae.engine.autoencoder import REGISTRY, SAE, SAEConfig
    from sae.engine.training.steps import StepSettings

    arch = REGISTRY[architecture]
    sparsity = {"k": k, "l1_coeff": 1.0}[arch.sparsity_param]
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z", architecture=architecture,
                        **arch.config_fields(sparsity))).to(device)
    opt = make_optimizer(sae, TrainConfig(layers=[0]))
    x = torch.randn(batch_size, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: d_sae // 10] = True  # AuxK at work on a tenth of the latents, as early in a run
    settings = StepSettings(sparsity, "unit", dead if arch.uses_dead_latents else None, max(1, d_in // 2), 1 / 32)

    def step() -> None:
        arch.step(sae, x, settings)
        remove_parallel_grad(sae)
        opt.step()
        sae.set_decoder_norm_to_unit()

    def matmul() -> None:
        torch.mm(x, sae.W_enc.detach())

    def timed(fn) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    t_mm = min(timed(matmul) for _ in range(2))
    t_step = min(timed(step) for _ in range(2))
    flops_mm = 2.0 * batch_size * d_in * d_sae
    step_flops = 5 * flops_mm
    return {
        "step_s": t_step,
        "step_gflops": step_flops / t_step / 1e9,
        "matmul_gflops": flops_mm / t_mm / 1e9,
        "fraction_of_matmul": (step_flops / t_step) / (flops_mm / t_mm),
    }


def bench_model(model, d_sae: int, batch_size: int = 4096, steps: int = 6, warmup: int = 2,
                layers: list[int] | None = None, autocast: bool = False, cancel: threading.Event | None = None) -> dict[str, Any]:
    """Throughput figures for one model: model pass, one layer, all layers in one pass, layers as separate runs."""
    context = min(128, model.n_ctx)
    layers = layers if layers is not None else list(range(model.n_layers))
    rows = _random_rows(model, max(64, 4 * batch_size // context), context)
    tokens = batch_size * steps
    one = [1 if model.n_layers > 1 else 0]
    t_pass_all = _time_model_pass(model, rows, layers, batch_size, 3, autocast)
    t_one = _time_training(model, rows, one, d_sae, batch_size, steps, warmup, autocast)
    t_all = _time_training(model, rows, layers, d_sae, batch_size, steps, warmup, autocast)
    t_sep = 0.0
    for layer in layers:
        if cancel is not None and cancel.is_set():
            break
        t_sep += _time_training(model, rows, [layer], d_sae, batch_size, steps, warmup, autocast)
    eff = sae_step_efficiency(model.d_z, d_sae, batch_size, model.device)
    bound = t_pass_all * steps + eff["step_s"] * steps * len(layers)  # one pass + the SAE steps
    return {
        "model": model.name,
        "device": str(model.device),
        "autocast_bf16": autocast,
        "n_layers": model.n_layers,
        "d_in": model.d_z,
        "d_sae": d_sae,
        "batch_size": batch_size,
        "context_size": context,
        "steps": steps,
        "model_pass_tokens_per_s": batch_size / t_pass_all,
        "one_layer": {"layer": one[0], "tokens_per_s": tokens / t_one},
        "all_layers_one_pass": {"layers": layers, "tokens_per_s": tokens / t_all, "seconds": t_all},
        "separate_runs": {"layers": layers, "tokens_per_s": tokens / t_sep if t_sep else None, "seconds": t_sep},
        "one_pass_over_bound": t_all / bound,  # <= ~1: costs no more than one model pass plus the SAE steps
        "one_pass_speedup_vs_separate": t_sep / t_all if t_all else None,
        "sae_step": eff,
    }


def reference_model_dir() -> Path:
    """The SAELens reference shape (a 2-layer 256-wide GPT-2, random weights) in a stable directory, so its
    tokenised corpus is cached across bench runs like any model's."""
    from sae.zoo.token_cache import cache_root

    root = cache_root() or Path(tempfile.gettempdir()) / "attnscope"
    path = root / "bench" / "gpt2-2x256-random-v2"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(0)
        random_gpt2_dir(path, 2, 256, 4, 128, 2048)
    return path


def reference_corpus(path: Path, tokens: int) -> Path:
    """A text of `tokens` random words the reference model's word-level tokenizer knows (`t1 t2 ...`), written
    once beside the model (so its tokenisation is cached like a real corpus's)."""
    f = path / f"corpus-{tokens}.txt"
    if not f.is_file():
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, 2048, (int(tokens * 1.05) + 1024,), generator=g).tolist()
        f.write_text("\n".join(" ".join(f"t{i}" for i in ids[j : j + 100]) for j in range(0, len(ids), 100)))
    return f


def time_process(model: str, layer: int, architecture: str, d_sae: int, tokens: int, device: str,
                 corpus: str = "default") -> dict[str, Any]:
    """Wall-clock of a whole `attnscope train` process (start-up, model, corpus, training, saving) for `tokens`."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "workbench.main", "train", "--model", model, "--corpus", corpus, "--layers", str(layer),
               "--architecture", architecture, "--width", str(d_sae), "--tokens", str(tokens), "--device", device,
               "--checkpoint-every", "0", "--out", str(Path(tmp) / "run"), "--json"]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t
    if done.returncode != 0:
        return {"seconds": None, "tokens_per_s": None, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    import json

    loop = json.loads(done.stdout).get("tokens_per_s")
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "loop_tokens_per_s_reported": loop}


def bench_train(model=None, d_sae: int | None = None, batch_size: int = 4096, steps: int = 6,
                reference: bool = True, device: str = "auto", process_tokens: int = 1_000_000,
                architectures: tuple[str, ...] = ("standard", "topk"), one_pass: bool = False) -> dict[str, Any]:
    """`attnscope bench train`: for each architecture and shape (the embedded default's 128 -> 1024 on layer 1;
    the SAELens reference 256 -> 2048 on layer 1 of a 2-layer 256-wide random GPT-2), the trainer loop's tokens/s
    (steady state), the whole process's tokens/s over `process_tokens` tokens (start-up included; 0 skips it) and
    the SAE step's FLOP/s against a plain matmul. `one_pass` adds the all-layers-in-one-pass figures."""
    from sae.engine.models import load_model, resolve_device
    from sae.zoo import load_model as load_default

    torch.manual_seed(0)
    dev = resolve_device(device)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "runs": [], "process_tokens": process_tokens}
    if model is None:
        model = load_default("default", device=str(dev))
        model_spec = "default"
    else:
        model_spec = model.name
    shapes = [(model, model_spec, d_sae or 8 * model.d_z, "default")]
    if reference:
        ref_dir = reference_model_dir()
        ref = load_model(str(ref_dir), device=str(dev))
        ref.name = "reference: 2-layer 256-wide GPT-2 (random weights)"
        shapes.append((ref, str(ref_dir), 2048, str(reference_corpus(ref_dir, max(process_tokens, 8192)))))
    for m, spec, width, corpus in shapes:
        context = min(128, m.n_ctx)
        rows = _random_rows(m, max(64, 4 * batch_size // context), context)
        layer = 1 if m.n_layers > 1 else 0
        for arch in architectures:
            t_loop = _time_training(m, rows, [layer], width, batch_size, steps, 2, False, architecture=arch)
            run = {
                "model": m.name, "architecture": arch, "layer": layer, "d_in": m.d_z, "d_sae": width,
                "batch_size": batch_size, "device": str(m.device),
                "loop_tokens_per_s": batch_size * steps / t_loop,
                "sae_step": sae_step_efficiency(m.d_z, width, batch_size, m.device, architecture=arch),
            }
            if process_tokens > 0:
                run["process"] = time_process(spec, layer, arch, width, process_tokens, str(dev), corpus)
            results["runs"].append(run)
    if one_pass:
        results["one_pass"] = bench_model(model, d_sae or 8 * model.d_z, batch_size, steps)
    return results
