"""Fixtures from the paper authors' OWN code (ckkissane/attention-output-saes, commit 03b2bc2) on the embedded default.

attnscope's `--paper` settings must rebuild these token for token (tests/experiments/test_paper_settings.py):

- `paper_ioi.json`: `ioi_dataset.IOIDataset(prompt_type="mixed", N=N, prepend_bos=False, seed=1)` as
  ioi_circuit_analysis.py builds it, with the module's NAMES cut to the names the embedded default's tokenizer
  keeps as one token (" " + name); then that script's combined corruption block, run as written:
  `gen_flipped_prompts("ABB->CDD, BAB->DCD")`, "It was a nice day. " prepended and " while the weather was nice"
  inserted at `word_idx["punct"]`. Recorded: clean tokens (unpadded, answer included) and word_idx, the flipped
  names, the corrupted token rows (unpadded) and the paper's `corr_offset`.
- `paper_induction.json`: long_prefix_induction.py's `get_avg_prefix_score_for_head`, seeded as the script seeds it
  (`torch.manual_seed(0); random.seed(0)` once, then prefix lengths 1..9), run on the embedded default as a
  TransformerLens `HookedTransformer` for every head of the last layer: every sequence it drew and its mean
  induction score per head and prefix length.

The paper's scripts load GPT-2 and data at import, so the functions and the corruption block are taken out of the
files with `ast` and run in a namespace holding the model, the tokenizer and the libraries they use. The paper's
`gen_flipped_prompts` draws names through Python sets, so its names depend on string hashing: the script pins
PYTHONHASHSEED=0.

Side environment (see README.md here), from the repo root:

    PAPER_REPO=/path/to/attention-output-saes /work/refenv/bin/python tests/reference/paper_settings.py
"""

from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import ast
import collections
import json
import random
import subprocess
import types
from importlib.metadata import version
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "fixtures" / "paper"
COMMIT = "03b2bc2"
DEFAULT_MODEL_DIR = ROOT / "sae" / "zoo" / "default" / "model"
N_IOI = 24
N_INDUCTION = 12
N_REAL_ROWS = 12
sys.path.insert(0, str(HERE))


def paper_file(name: str) -> str:
    repo = os.environ.get("PAPER_REPO", "/work/.mirror/ckkissane+attention-output-saes/repo")
    return subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{name}"], check=True, capture_output=True,
                          text=True).stdout


def tokenizer():
    tok = transformers.AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    tok.pad_token = tok.eos_token  # as IOIDataset(tokenizer=None) does for GPT-2
    return tok


def ioi_fixture(tok) -> dict:
    src = paper_file("ioi_dataset.py")
    mod = types.ModuleType("ioi_dataset")
    exec(compile(src, "ioi_dataset.py", "exec"), mod.__dict__)
    init = mod.IOIDataset.__init__  # gen_flipped_prompts builds a dataset on its default device "cuda": make it "cpu"
    init.__defaults__ = init.__defaults__[:-1] + ("cpu",)
    full = list(mod.NAMES)
    mod.NAMES = [n for n in full if len(tok.tokenize(" " + n)) == 1]  # the model's single-token names
    ds = mod.IOIDataset(prompt_type="mixed", N=N_IOI, tokenizer=tok, prepend_bos=False, seed=1, device="cpu")

    # ioi_circuit_analysis.py's combined corruption, statements taken out of the script and run as written
    script = ast.parse(paper_file("ioi_circuit_analysis.py"))
    body = script.body
    first = next(i for i, s in enumerate(body) if isinstance(s, ast.Assign)
                 and getattr(s.targets[0], "id", "") == "random_token_dataset")
    last = next(i for i, s in enumerate(body) if isinstance(s, ast.Assign)
                and getattr(s.targets[0], "id", "") == "random_tokens_prepend_and_middle_filler" and i > first + 5)

    class ToTokens:  # TL's model.to_tokens(text, prepend_bos=False): the tokenizer's ids, batch of one
        def to_tokens(self, text: str, prepend_bos: bool = False):
            assert prepend_bos is False
            return torch.tensor([tok(text)["input_ids"]])

    ns = {"ioi_dataset": ds, "model": ToTokens(), "torch": torch, "device": "cpu",
          "tqdm": types.SimpleNamespace(trange=range)}
    exec(compile(ast.Module(body[first:last + 1], type_ignores=[]), "ioi_circuit_analysis.py", "exec"), ns)
    flipped = ns["random_token_dataset"]
    corrupted = ns["random_tokens_prepend_and_middle_filler"]
    offset = ns["prepend_tokens"].shape[1] + ns["filler_tokens"].shape[1]

    prompts = []
    for i, p in enumerate(ds.ioi_prompts):
        n_clean = int(ds.word_idx["end"][i]) + 2  # prompt tokens and the answer
        fp = flipped.ioi_prompts[i]
        n_flip = len(tok(fp["text"])["input_ids"])
        prompts.append({
            "text": p["text"], "IO": p["IO"], "S": p["S"], "order": ds.templates_by_prompt[i],
            "tokens": ds.toks[i, :n_clean].tolist(),
            "word_idx": {k: int(ds.word_idx[k][i]) for k in ("IO", "S1", "S2", "end", "punct")},
            "flipped_text": fp["text"], "flipped_IO": fp["IO"], "flipped_S": fp["S"],
            "corrupted_tokens": corrupted[i, : offset + n_flip].tolist(),
        })
    return {
        "made_by": "ioi_dataset.IOIDataset('mixed', N, prepend_bos=False, seed=1) and ioi_circuit_analysis.py's "
                   "combined corruption block, from ckkissane/attention-output-saes " + COMMIT,
        "n": N_IOI, "seed": 1, "names_all": len(full), "names": mod.NAMES, "corr_offset": int(offset),
        "prepend_text": ns["prepend_text"], "filler_text": ns["filler_text"], "prompts": prompts,
    }


def induction_fixture(tok) -> dict:
    from tl_local import gpt2_copy_with_n_ctx, tl_from_local

    tmp, _ = gpt2_copy_with_n_ctx(DEFAULT_MODEL_DIR, prefix="attnscope_paper_")
    try:
        tl_model = tl_from_local(tmp, transformers.GPT2LMHeadModel, processed=True,
                                 tokenizer=transformers.AutoTokenizer.from_pretrained(str(tmp)))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    seen: list[list[int]] = []

    class Recording:  # the model the paper's function sees: TL's, with every input recorded
        cfg = tl_model.cfg
        tokenizer = tl_model.tokenizer

        def run_with_cache(self, tokens):
            seen.append(tokens[0].tolist())
            return tl_model.run_with_cache(tokens)

    tree = ast.parse(paper_file("long_prefix_induction.py"))
    fn = next(s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "get_avg_prefix_score_for_head")
    ns = {"model": Recording(), "torch": torch, "random": random, "device": "cpu",
          "tqdm": types.SimpleNamespace(tqdm=lambda x: x)}
    exec(compile(ast.Module([fn], type_ignores=[]), "long_prefix_induction.py", "exec"), ns)
    layer = tl_model.cfg.n_layers - 1
    scores: dict[str, dict[str, float]] = {}
    sequences: list[list[int]] = []
    with torch.no_grad():
        for head in range(tl_model.cfg.n_heads):
            torch.manual_seed(0)  # as the script seeds before each head's sweep
            random.seed(0)
            seen.clear()
            scores[str(head)] = {str(p): float(ns["get_avg_prefix_score_for_head"](N_INDUCTION, 128, p, layer, head))
                                 for p in range(1, 10)}
            if head == 0:
                sequences = list(seen)
            assert seen == sequences  # every head sees the same sequences
    # the real-text study: check_long_prefix_by_attn (first event per row, fuzzy prefix match) on token rows of
    # this repo's model card and ARCHITECTURE.md, every head of the last layer, and the fuzzy variants of every token
    text = (ROOT / "sae" / "zoo" / "default" / "MODEL_CARD.md").read_text() + (ROOT / "ARCHITECTURE.md").read_text()
    ids = tok(text)["input_ids"]
    bos = tl_model.tokenizer.bos_token_id
    rows = [[bos] + ids[i : i + 127] for i in range(0, 127 * N_REAL_ROWS, 127)]
    all_tokens = torch.tensor(rows)
    real_ns = {"model": tl_model, "torch": torch, "all_tokens": all_tokens,
               "tqdm": types.SimpleNamespace(trange=range, tqdm=lambda x: x)}
    wanted = ("get_token_with_space", "remove_space_from_token", "get_uppercase_token", "get_lowercase_token",
              "check_fuzzy_match", "check_long_prefix_by_attn")
    fns = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name in wanted]
    exec(compile(ast.Module(fns, type_ignores=[]), "long_prefix_induction.py", "exec"), real_ns)
    real = {}
    with torch.no_grad():
        for head in range(tl_model.cfg.n_heads):
            examples, lens = real_ns["check_long_prefix_by_attn"](tl_model, N_REAL_ROWS, 1, layer, head, 0.3)
            real[str(head)] = {"prefix_lens": lens, "events": [[int(e[1]), int(e[2])] for e in examples]}
    variants = [[real_ns[f](t) for f in wanted[:4]] for t in range(tl_model.cfg.d_vocab)]

    # induction_feature_deep_dive.py's proxy ("X is next by induction") on the same rows, for the most frequent
    # token that follows a repeated token there
    deep = ast.parse(paper_file("induction_feature_deep_dive.py"))
    keep = [st for st in deep.body if (isinstance(st, ast.FunctionDef) and st.name in (*wanted[:4], "create_better_proxy_mask"))
            or (isinstance(st, ast.Assign) and getattr(st.targets[0], "id", "").endswith(("_token", "_to_token"))
                and getattr(st.targets[0], "id", "") != "board_token")]
    proxy_ns = {"model": tl_model, "torch": torch, "collections": collections}
    exec(compile(ast.Module(keep, type_ignores=[]), "induction_feature_deep_dive.py", "exec"), proxy_ns)
    after_repeat = collections.Counter(
        r[i + 1] for r in rows for i in range(1, len(r) - 1) if r[i] in r[1:i])
    target = after_repeat.most_common(1)[0][0]
    proxy_mask = proxy_ns["create_better_proxy_mask"](all_tokens, target)
    return {
        "real_text": {"rows": rows, "threshold": 0.3, "layer": layer, "heads": real, "variants": variants,
                      "variants_are": list(wanted[:4])},
        "proxy": {"target": int(target), "mask": proxy_mask.int().tolist(),
                  "made_by": "induction_feature_deep_dive.py create_better_proxy_mask(rows, target)"},
        "made_by": "long_prefix_induction.py get_avg_prefix_score_for_head (torch.manual_seed(0); random.seed(0); "
                   "prefix lengths 1..9) from ckkissane/attention-output-saes " + COMMIT + " on the embedded default "
                   "as a TransformerLens HookedTransformer",
        "n_per_length": N_INDUCTION, "seq_len": 128, "seed": 0, "layer": layer, "prefix_lengths": list(range(1, 10)),
        "sequences": sequences, "scores": scores,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    assert tok("Then")["input_ids"][0] != tok.bos_token_id, "the tokenizer must not add BOS (prepend_bos=False)"
    (OUT / "paper_ioi.json").write_text(json.dumps(ioi_fixture(tok), indent=1) + "\n")
    (OUT / "paper_induction.json").write_text(json.dumps(induction_fixture(tok)) + "\n")
    versions = {k: version(k) for k in ("torch", "transformers", "transformer-lens", "numpy")}
    (OUT / "versions.json").write_text(json.dumps({**versions, "paper_commit": COMMIT, "PYTHONHASHSEED": "0",
                                                   "command": "tests/reference/paper_settings.py"}, indent=1) + "\n")
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
