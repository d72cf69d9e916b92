"""A tiny random GPT-2 whose tokenizer was trained on IOI sentences, so every name is one token.

The shared tiny model's tokenizer knows only " Mary" and " John"; the corruptions that change names need four.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae import ioi_data


def ioi_text() -> list[str]:
    prompts = ioi_data.generate(1500, seed=123, split="all")
    lines = [p.full_text + "." for p in prompts]
    for p in prompts[:200]:
        for kind in ("abs_pos", "rel_pos", "alongside"):
            lines.append(ioi_data.corrupt(p, kind).full_text + ".")
    lines += [" ".join(ioi_data.NAMES)] * 20
    return lines


def build_ioi_model_dir(path: Path, n_layer: int = 3, d_model: int = 64, n_head: int = 4, n_ctx: int = 64, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(ioi_text(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=n_ctx, vocab_size=tok.get_vocab_size(),
        bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(path)
    return path
