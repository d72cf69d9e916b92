"""Building the embedded default: tokenizer, GPT-2-architecture LM, and (via sae.engine.training.loop) its attention SAEs.

The LM recipe follows ../shared/DEFAULT-MODEL-NOTES.md, the trials that formed induction heads on a 2-core CPU:
AdamW lr 3e-3 with 200 warm-up steps and a cosine decay to 3e-4, no weight decay or dropout, grad clip 1.0,
betas (0.9, 0.98), and batches that mix natural text with synthetic rows that reward induction. We add IOI
sentences from the training split of Wang et al.'s templates so the model learns the IOI task, and a third layer.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sae.engine.safe_io import atomic_write_text, atomic_write_with, save_torch
from sae.zoo import corpus

from sae.experiments import ioi_data

BOS = "<|endoftext|>"


@dataclass
class LMConfig:
    """Everything that determines the default LM; saved as `train_config.json` beside it."""

    vocab_size: int = 2048
    n_layer: int = 3
    d_model: int = 128
    n_head: int = 4
    n_ctx: int = 128
    d_mlp: int = 512
    steps: int = 4000  # phase 1: cosine schedule
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # rows of each batch by kind; the rest are plain natural text
    periodic_rows: int = 4  # random-token blocks of period 8..40 repeated along the row
    repeat_rows: int = 6  # natural text with one span copied after a gap
    ioi_rows: int = 6  # IOI sentences (training templates and name pairs only)
    # phase 2: after the cosine schedule, `phase2_steps` more steps at a constant `phase2_lr` with this row mix;
    # it exists to sharpen a previous-token head (phase 1 left only a smeared one, 0.33 attention to t-1)
    phase2_steps: int = 2500
    phase2_lr: float | None = 1e-3  # constant; None -> min_lr
    phase2_periodic_rows: int = 6
    phase2_ioi_rows: int = 6
    # rows that reward attending exactly to t-1: even slots follow a fixed permutation of a 64-token alphabet,
    # odd slots are noise from the same alphabet, so x[t+1] = g(x[t-1]) is only predictable through token t-1
    phase2_prevtoken_rows: int = 6
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 250
    extra: dict = field(default_factory=dict)


# ---- tokenizer --------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with `<|endoftext|>` (id 0) as BOS/EOS, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=BOS, pad_token=BOS, model_max_length=10**6
    )


# ---- batches ------------------------------------------------------------------------------------------------


class RowSampler:
    """Draws training rows `[n_ctx]` (BOS first) of each kind from pre-tokenised streams."""

    def __init__(self, natural: torch.Tensor, ioi: torch.Tensor, cfg: LMConfig, bos_id: int, seed: int) -> None:
        self.natural, self.ioi, self.cfg, self.bos = natural, ioi, cfg, bos_id
        self.g = torch.Generator().manual_seed(seed)

    def _window(self, stream: torch.Tensor, length: int) -> torch.Tensor:
        start = int(torch.randint(0, len(stream) - length, (1,), generator=self.g))
        return stream[start : start + length]

    def prevtoken_row(self) -> torch.Tensor:
        body = self.cfg.n_ctx - 1
        alphabet, perm = prevtoken_task(self.cfg)
        idx = torch.empty(body, dtype=torch.long)
        idx[1::2] = torch.randint(0, len(alphabet), ((body) // 2,), generator=self.g)
        c = int(torch.randint(0, len(alphabet), (1,), generator=self.g))
        for i in range(0, body, 2):
            idx[i] = c
            c = int(perm[c])
        return alphabet[idx]

    def natural_row(self) -> torch.Tensor:
        return self._window(self.natural, self.cfg.n_ctx - 1)

    def periodic_row(self) -> torch.Tensor:
        period = int(torch.randint(8, 41, (1,), generator=self.g))
        block = torch.randint(1, self.cfg.vocab_size, (period,), generator=self.g)
        reps = math.ceil((self.cfg.n_ctx - 1) / period)
        return block.repeat(reps)[: self.cfg.n_ctx - 1]

    def repeat_row(self) -> torch.Tensor:
        body = self.cfg.n_ctx - 1
        span_len = int(torch.randint(8, 33, (1,), generator=self.g))
        gap_len = int(torch.randint(0, body - 2 * span_len, (1,), generator=self.g))
        span = self._window(self.natural, span_len)
        gap = self._window(self.natural, gap_len) if gap_len else span[:0]
        head = torch.cat([span, gap, span])
        tail = self._window(self.natural, body - len(head)) if body > len(head) else head[:0]
        return torch.cat([head, tail])[:body]

    def ioi_row(self) -> torch.Tensor:
        return self._window(self.ioi, self.cfg.n_ctx - 1)

    def batch(self, phase2: bool = False) -> torch.Tensor:
        """`[batch, n_ctx]` token ids."""
        c = self.cfg
        n_periodic = c.phase2_periodic_rows if phase2 else c.periodic_rows
        n_ioi = c.phase2_ioi_rows if phase2 else c.ioi_rows
        n_prev = c.phase2_prevtoken_rows if phase2 else 0
        rows = (
            [self.prevtoken_row() for _ in range(n_prev)]
            + [self.periodic_row() for _ in range(n_periodic)]
            + [self.repeat_row() for _ in range(c.repeat_rows)]
            + [self.ioi_row() for _ in range(n_ioi)]
        )
        rows += [self.natural_row() for _ in range(c.batch_size - len(rows))]
        body = torch.stack(rows)
        return torch.cat([torch.full((len(rows), 1), self.bos, dtype=torch.long), body], dim=1)


def prevtoken_task(cfg: LMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed alphabet (64 token ids) and permutation of the previous-token rows, derived from the seed."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    alphabet = torch.randperm(cfg.vocab_size - 1, generator=g)[:64] + 1
    return alphabet, torch.randperm(64, generator=g)


def tokenize_stream(tokenizer, texts: list[str], sep_id: int) -> torch.Tensor:
    """All texts as one 1-D stream of ids, separated by `sep_id`."""
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep_id)
    return torch.tensor(ids, dtype=torch.long)


# ---- training -----------------------------------------------------------------------------------------------


def lr_at(step: int, cfg: LMConfig) -> float:
    if step >= cfg.steps:  # phase 2
        return cfg.phase2_lr if cfg.phase2_lr is not None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def _atomic_torch_save(obj, path: Path) -> None:
    """torch.save through a temporary file renamed into place (umask modes, one-line error on a full disk)."""
    atomic_write_with(path, lambda tmp: save_torch(obj, tmp))


LM_CHECKPOINT_KEYS = ("model", "opt", "sampler_rng", "step")


def load_lm_checkpoint(path: Path) -> dict:
    """The LM training checkpoint, read as weights only (tensors, numbers, strings, containers): a crafted
    pickle is refused without running anything; a truncated or foreign file is a one-line ValueError."""
    from sae.engine.safe_io import UnsafeFileError, safe_torch_load

    state = safe_torch_load(path, "LM checkpoint")
    if not isinstance(state, dict) or any(k not in state for k in LM_CHECKPOINT_KEYS):
        raise UnsafeFileError(f"LM checkpoint {path} is not an attnscope LM checkpoint (keys {LM_CHECKPOINT_KEYS})")
    return state


def build_model(cfg: LMConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(hf_cfg)


def repeat_logprob(model, cfg: LMConfig, n: int = 16, span: int = 30, seed: int = 123) -> tuple[float, float]:
    """Mean log-prob of the first and of the repeated copy of `[BOS, r, r]`, r = `span` random ids."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, cfg.vocab_size, (n, span), generator=g)
    toks = torch.cat([torch.zeros(n, 1, dtype=torch.long), r, r], dim=1)
    with torch.no_grad():
        logp = model(toks).logits.log_softmax(-1)
    lp = logp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]
    return float(lp[:, 1:span].mean()), float(lp[:, span:].mean())


def prev_token_score_hf(model, rows: torch.Tensor) -> float:
    """Best head's mean attention from t to t-1 on `rows [batch, pos]` (eager attention, patterns returned)."""
    from sae.experiments.phenomena import prev_token_score_from_pattern

    impl = model.config._attn_implementation  # noqa: SLF001 - transformers keeps the active implementation only here
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            atts = torch.stack(model(rows, output_attentions=True).attentions)  # [layer, batch, head, q, k]
    finally:
        model.set_attn_implementation(impl)
    return float(prev_token_score_from_pattern(atts).mean(1).max())


def ioi_logit_diff_hf(model, tokenizer, n: int = 100, seed: int = 7, split: str = "heldout") -> float:
    """Mean logit(IO) - logit(S) at the last position over generated IOI prompts (both orders)."""
    from sae.experiments.phenomena import ioi_logit_diffs

    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompts = ioi_data.generate(n, seed=seed, names=ioi_data.single_token_names(encode), split=split)
    diffs = ioi_logit_diffs(prompts, encode, tokenizer.bos_token_id, lambda t: model(t).logits[0, -1])
    return sum(diffs) / len(diffs)


def train_lm(
    out_dir: Path,
    cfg: LMConfig,
    resume: bool = True,
    on_progress: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train tokenizer + LM into `out_dir/model` (HF layout). Checkpoints to `out_dir/lm_checkpoint.pt`."""
    out_dir = Path(out_dir)
    ckpt = out_dir / "lm_checkpoint.pt"
    state = load_lm_checkpoint(ckpt) if resume and ckpt.exists() else None  # fail fast, before any work
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)

    from transformers import PreTrainedTokenizerFast

    tok_path = model_dir / "tokenizer.json"
    train_texts = corpus.documents("train", synthetic=False)
    ioi_train = [p.full_text + "." for p in ioi_data.generate(20000, seed=cfg.seed, split="train")]
    if tok_path.exists() and resume:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    else:
        t0 = time.time()
        tokenizer = train_tokenizer(train_texts + ioi_train, cfg.vocab_size)
        tokenizer.save_pretrained(model_dir)
        log(f"tokenizer: {len(tokenizer)} tokens, trained in {time.time() - t0:.0f}s")
    bos = tokenizer.bos_token_id
    natural = tokenize_stream(tokenizer, train_texts, bos)
    ioi_stream = tokenize_stream(tokenizer, ["\n".join(ioi_train)], bos)
    log(f"streams: natural {len(natural):,} tokens, IOI {len(ioi_stream):,} tokens")
    held = tokenize_stream(tokenizer, corpus.documents("heldout", synthetic=False)[:20], bos)
    heldout_rows = held[: 16 * (cfg.n_ctx - 1)].view(16, cfg.n_ctx - 1)
    heldout_rows = torch.cat([torch.full((16, 1), bos, dtype=torch.long), heldout_rows], dim=1)

    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    sampler = RowSampler(natural, ioi_stream, cfg, bos, cfg.seed)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sampler.g.set_state(state["sampler_rng"])
        step = int(state["step"])
        del state
        log(f"resumed at step {step}")

    def save_checkpoint() -> None:
        _atomic_torch_save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "sampler_rng": sampler.g.get_state(), "step": step,
             "cfg": asdict(cfg)},
            ckpt,
        )

    model.train()
    t0, tokens0 = time.time(), 0
    total = cfg.steps + cfg.phase2_steps
    while step < total:
        if cancel is not None and cancel.is_set():
            save_checkpoint()
            log(f"stopped at step {step}; checkpoint saved, resume with the same command")
            return model_dir
        batch = sampler.batch(phase2=step >= cfg.steps)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, cfg)
        loss = model(batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"LM loss became {loss.item()} at step {step}; last checkpoint kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens0 += batch.numel()
        info = {"step": step, "steps": total, "loss": loss.item(), "tokens_per_s": tokens0 / (time.time() - t0)}
        if on_progress:
            on_progress(info)
        if step % cfg.checkpoint_every == 0 or step == total:
            model.eval()
            first, rep = repeat_logprob(model, cfg)
            ioi = ioi_logit_diff_hf(model, tokenizer, n=40)
            prev = prev_token_score_hf(model, heldout_rows)
            model.train()
            log(
                f"step {step}/{total} loss {loss.item():.3f} lr {lr_at(step, cfg):.2e} "
                f"repeat logp {first:.2f}->{rep:.2f} ioi {ioi:+.2f} prev-token {prev:.2f} "
                f"{info['tokens_per_s']:.0f} tok/s"
            )
            save_checkpoint()
    model.eval()
    save_model_files(model.half(), model_dir)  # fp16 storage keeps the package small
    atomic_write_text(model_dir / "train_config.json", json.dumps(asdict(cfg), indent=2))
    return model_dir


def save_model_files(model, model_dir: Path) -> None:
    """`save_pretrained` into a temporary sibling, then each file renamed into `model_dir`: a kill or a full disk
    leaves every file old or new (a full disk is a one-line OutputError), never half-written."""
    import shutil
    import tempfile

    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=model_dir))
    try:
        model.save_pretrained(tmp)
        for f in sorted(tmp.iterdir()):
            atomic_write_with(model_dir / f.name, lambda dst, src=f: shutil.copyfile(src, dst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
