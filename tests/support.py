"""The tests' shared helpers, in one module (fixtures are in conftest.py, built on these): the tiny random GPT-2
and its random SAEs, the in-process CLI runner, the workbench pilot's waits, the IOI model whose names are single
tokens, and the distributed tests' token rows. Test modules import from here, never from each other."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from sae.engine.jobs import Progress

# ---- the tiny model and its SAEs ----------------------------------------------------------------------------

TINY_TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "The quick brown fox jumps over the lazy dog. def foo(x): return x + 1\n"
    "import os, sys\nclass Thing(object):\n    pass\n"
) * 20


def build_tiny_model_dir(
    path: Path, n_layer: int = 3, d_model: int = 64, n_head: int = 4, n_ctx: int = 64, seed: int = 0,
    texts: list[str] | None = None, vocab_size: int = 400,
) -> Path:
    """Write a random GPT-2 (config.json, model.safetensors, tokenizer.json) into `path`, its BPE trained on
    `texts` (default: a few repeated sentences and lines of code)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts if texts is not None else [TINY_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=n_ctx, vocab_size=tok.get_vocab_size(),
        bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-zero biases so bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(path)
    return path


def random_sae(model, layer: int, d_sae: int = 96, architecture: str = "standard", seed: int = 0, k: int | None = None):
    """An SAE for `model`'s layer with random weights and non-zero biases."""
    from sae.engine.models import z_hook_name
    from sae.engine.autoencoder import SAE, SAEConfig

    torch.manual_seed(seed)
    cfg = SAEConfig(
        d_in=model.d_z, d_sae=d_sae, hook_name=z_hook_name(layer), architecture=architecture,
        model_name=model.name, n_heads=model.n_heads, k=k,
    )
    sae = SAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if sae.threshold is not None:
            sae.threshold.uniform_(0, 0.1)
    return sae


def hf_z_offset(hf, layer: int):
    """By hand from a transformers GPT-2: what HookedTransformer's weight processing removes from z,
    `b_V + ln_1.bias @ W_V` per head, flattened head-major (`[n_head * d_head]`)."""
    d = hf.config.n_embd
    block = hf.transformer.h[layer]
    w_v = block.attn.c_attn.weight[:, 2 * d :].detach()  # Conv1D: [d_model, n_head * d_head]
    return block.attn.c_attn.bias[2 * d :].detach() + block.ln_1.bias.detach() @ w_v


def sae_set_dir(model, root: Path, d_sae: int = 24, seed: int = 0) -> Path:
    """A directory of SAELens dirs, one random SAE per layer of `model` (seeds `seed + layer`)."""
    from sae.engine.formats import save_sae

    for layer in range(model.n_layers):
        save_sae(random_sae(model, layer, d_sae=d_sae, seed=seed + layer), root / "saes" / f"blocks.{layer}.attn.hook_z")
    return root / "saes"


def token_rows(model, n_rows: int, context: int) -> torch.Tensor:
    """The test's token rows (the same in every process and in the test itself)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, model.d_vocab, (n_rows, context), generator=g)
    rows[:, 0] = model.bos_token_id
    return rows


# ---- the CLI, in process --------------------------------------------------------------------------------------

def run_cli(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `attnscope ARGV` in-process: exit code, stdout, and stderr lines less the libraries' progress noise."""
    from sae.cli import main

    code = main(argv)
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip() and "Loading weights" not in line and "it/s]" not in line]
    return code, cap.out, err


# ---- the workbench's pilot tests ------------------------------------------------------------------------------

PROMPT = "When Mary and John went to the store, John gave a drink to"


async def settle(pilot, cond, timeout: float = 30.0) -> None:
    """Wait (in app time) until `cond()` holds; fail after `timeout` seconds."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def type_prompt(pilot, app, text: str = PROMPT) -> None:
    """Type `text` into the explore prompt, press enter and wait for the heatmap."""
    app.screen.query_one("#prompt").focus()
    app.screen.query_one("#prompt").value = text
    await pilot.press("enter")
    await settle(pilot, lambda: app.screen.result is not None and app.screen.result.tokens)


def slow_job(started: threading.Event, release: threading.Event, period_s: float = 0.01):
    """A long job that reports progress (so quick requests are served) until `release` is set."""

    def run(rep):
        started.set()
        while not release.is_set():
            time.sleep(period_s)
            rep.progress(Progress("slow", 0, 0, note="working"))
        return "ok"

    return run


# ---- IOI: a tiny model whose names are single tokens --------------------------------------------------------

def ioi_text() -> list[str]:
    from sae.experiments import ioi_data

    prompts = ioi_data.generate(1500, seed=123, split="all")
    lines = [p.full_text + "." for p in prompts]
    for p in prompts[:200]:
        for kind in ("abs_pos", "rel_pos", "alongside"):
            lines.append(ioi_data.corrupt(p, kind).full_text + ".")
    lines += [" ".join(ioi_data.NAMES)] * 20
    return lines


def build_ioi_model_dir(path: Path, n_layer: int = 3, d_model: int = 64, n_head: int = 4, n_ctx: int = 64, seed: int = 0) -> Path:
    """The shared tiny random GPT-2, with a tokenizer trained on IOI text so every name is one token."""
    return build_tiny_model_dir(path, n_layer, d_model, n_head, n_ctx, seed, texts=ioi_text(), vocab_size=600)


# ---- the CLI's training flags and its one error line ---------------------------------------------------------

SMALL = ["--width", "64", "--batch-size", "128", "--context-size", "16", "--buffer-batches", "2",
         "--warmup-steps", "2", "--l1", "0.01"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("attnscope: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


# ---- training: the `rows` fixture's context, counting model passes ---------------------------------------------

CTX = 16  # the `rows` fixture's context (tests/conftest.py)


@contextmanager
def count_passes(model) -> Iterator[dict[str, int]]:
    """Counts the model's forward passes while active."""
    passes = {"n": 0}
    original = model.bridge.run_with_hooks

    def counting(*a, **k):
        passes["n"] += 1
        return original(*a, **k)

    model.bridge.run_with_hooks = counting
    try:
        yield passes
    finally:
        del model.bridge.run_with_hooks


# ---- files: a tree's digest, a dead process id ---------------------------------------------------------------

def tree_digest(d: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def dead_pid() -> int:
    """A process id that is certainly not running (a child that already exited and was reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- data parallelism: ranks of tests/dist_worker.py --------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 48
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")


def base_cfg(**kw) -> dict:
    """A tiny standard run whose large L1 and learning rate kill features, so the resample after step 6 (counting
    from step 3) revives some."""
    c = dict(layers=[0, 1], architecture="standard", normalize_activations="expected_average_only_in", d_sae=48,
             batch_size=64, context_size=CTX, total_tokens=64 * 9, rows_per_pass=4, buffer_batches=4,
             warmup_steps=2, checkpoint_every=0, log_every=1, lr=1e-2, l1_coeff=8.0, resample_every=6,
             resample_window=3, data_shards=2, seed=3)
    c.update(kw)
    return c


def launch(spec: dict, tmp: Path, nproc: int = 2, timeout: float = 90) -> list[int]:
    """Start `nproc` ranks of tests/dist_worker.py as torchrun would (127.0.0.1, a free port); their exit codes."""
    path = tmp / f"spec-{os.getpid()}-{len(list(tmp.glob('spec-*')))}.json"
    path.write_text(json.dumps(spec))
    from sae.engine.training.distributed import free_port

    port = free_port()
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ATTNSCOPE_DIST_TIMEOUT": "30"}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "dist_worker.py"), str(path)], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    codes = []
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)  # a rank hung on its dead peer: what torchrun's agent does
            p.wait()
        codes.append(p.returncode)
    for p, c in zip(procs, codes):
        if c != 0 and not spec.get("kill"):
            print(p.stdout.read().decode(errors="replace")[-3000:])
    return codes


def assert_same_weights(a_dir: Path, b_dir: Path, layers=(0, 1), atol: float = 1e-5) -> None:
    from sae.engine.formats import load_sae

    for layer in layers:
        a = load_sae(a_dir / f"blocks.{layer}.attn.hook_z")
        b = load_sae(b_dir / f"blocks.{layer}.attn.hook_z")
        for name in NAMES:
            where = f"layer {layer} {name}"
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-4,
                                       msg=lambda m, where=where: f"{where}: {m}")


def rank_pids(root_pid: int, rank: int) -> list[int]:
    """The pids among `root_pid`'s descendants (read from /proc) whose environment says `RANK=rank`: the worker
    processes torchrun started for that rank."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    found, stack = [], [root_pid]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                found.append(pid)
    return found


def private_dirs(monkeypatch, tmp_path: Path) -> None:
    """Data and cache dirs under `tmp_path`, no labels file from the environment."""
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNSCOPE_LABELS", raising=False)


def small_dashboard_spec():
    """A dashboard spec small enough for the tiny model (256 tokens, 5 top examples)."""
    from sae.analysis.dashboards import DashboardSpec

    return DashboardSpec(n_tokens=32 * 8, context=3, n_top=5, n_samples=4, n_dfa=2, context_size=32, n_logits=3)


def small_docs() -> list[str]:
    return [TINY_TEXT[i : i + 400] for i in range(0, 4000, 400)]


def two_random_saes(model) -> dict:
    """Random 24-wide SAEs for layers 0 and 1 (seeds 1 and 2)."""
    return {0: random_sae(model, 0, d_sae=24, seed=1), 1: random_sae(model, 1, d_sae=24, seed=2)}


def build_small_dashboards(model, saes: dict) -> None:
    from sae.analysis.dashboards import build_dashboards

    for layer, sae in saes.items():
        build_dashboards(model, sae, layer, small_dashboard_spec(), docs=small_docs())


def torch_layer_norm(ln, eps: float = 1e-5) -> torch.nn.LayerNorm:
    """A `torch.nn.LayerNorm` holding the weight and bias of a model's LayerNorm (the bridge's `NormalizationBridge`,
    whose `original_component` is Hugging Face's, or `sae.engine.gpt2.GPT2LayerNorm`): an independent computation of
    it, for either backend."""
    inner = getattr(ln, "original_component", None) or ln
    out = torch.nn.LayerNorm(inner.weight.shape[0], eps=eps)
    with torch.no_grad():
        out.weight.copy_(inner.weight)
        out.bias.copy_(inner.bias)
    return out.requires_grad_(False)
