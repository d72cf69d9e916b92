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

from sae.engine.training import Trainer, TrainConfig, make_optimizer, remove_parallel_grad, standard_step_grads


def random_gpt2_dir(path: Path, n_layer: int, d_model: int, n_head: int, n_ctx: int, vocab: int) -> Path:
    """A GPT-2-architecture model with random weights and a placeholder word-level tokenizer, in HF layout."""
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<|endoftext|>"))
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
                   warmup: int, autocast: bool) -> float:
    """Seconds for `steps` steady-state training steps (after `warmup` steps), all `layers` in one pass."""
    cfg = TrainConfig(
        layers=layers, d_sae=d_sae, batch_size=batch_size, context_size=rows.shape[1],
        total_tokens=batch_size * (steps + warmup), rows_per_pass=max(1, batch_size // rows.shape[1]),
        buffer_batches=2, warmup_steps=10, checkpoint_every=0, log_every=0, resample_every=0, autocast=autocast,
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
        trainer.write_checkpoint = lambda: trainer.checkpoint_path  # type: ignore[method-assign]
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


def sae_step_efficiency(d_in: int, d_sae: int, batch_size: int, device: torch.device, reps: int = 5) -> dict[str, float]:
    """Achieved FLOP/s of one standard SAE step (5 matmuls of B x d_in x d_sae, plus Adam and the decoder
    constraint) against a plain matmul of the same shape on the same device."""
    from sae.engine.autoencoder import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, hook_name="blocks.0.attn.hook_z")).to(device)
    opt = make_optimizer(sae, TrainConfig(layers=[0]))
    x = torch.randn(batch_size, d_in, device=device)

    def step() -> None:
        standard_step_grads(sae, x, 1.0)
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


def bench_train(model=None, d_sae: int | None = None, batch_size: int = 4096, steps: int = 6,
                reference: bool = True, device: str = "auto") -> dict[str, Any]:
    """`attnscope bench train`: the embedded default (or `model`), the SAELens reference shape (a 2-layer
    256-wide GPT-2, 256 -> 2048 SAE on layer 1), and on CUDA a GPT-2-Small-shaped model under bf16 autocast."""
    from sae.engine.models import load_model, resolve_device
    from sae.zoo import load_model as load_default

    torch.manual_seed(0)
    dev = resolve_device(device)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "runs": []}
    if model is None:
        model = load_default("default", device=str(dev))
    results["runs"].append(bench_model(model, d_sae or 16 * model.d_z, batch_size, steps))
    with tempfile.TemporaryDirectory() as tmp:
        if reference:
            ref = load_model(str(random_gpt2_dir(Path(tmp) / "ref", 2, 256, 4, 128, 2048)), device=str(dev))
            ref.name = "reference: 2-layer 256-wide GPT-2 (random weights)"
            r = bench_model(ref, 2048, batch_size, steps, layers=[1])
            r["saelens_reference_tokens_per_s"] = 8500.0
            r["vs_saelens"] = r["one_layer"]["tokens_per_s"] / 8500.0
            results["runs"].append(r)
        if dev.type == "cuda":
            big = load_model(str(random_gpt2_dir(Path(tmp) / "gpt2s", 12, 768, 12, 1024, 50257)), device=str(dev))
            big.name = "GPT-2 Small shape (random weights)"
            results["runs"].append(bench_model(big, 24576, batch_size, steps, autocast=True))
    return results
