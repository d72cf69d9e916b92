"""`attnscope zoo train-default`: the stages that rebuild the embedded default, resumable.

Stages, each reading the previous one's output under the working directory:
  lm    -> OUT/model/          tokenizer + GPT-2-architecture LM (sae.zoo.lm.train_lm)
  saes  -> OUT/saes/           one attention SAE per layer, trained in one pass (sae.engine.training.loop)
  card  -> OUT/MODEL_CARD.md   phenomena and SAE metrics, recomputed on the held-out split
With `install`, OUT/model, OUT/saes and the card are copied into the package (sae/zoo/default/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sae import zoo
from sae.engine.safe_io import atomic_write_text
from sae.zoo.lm import LMConfig, train_lm

if TYPE_CHECKING:
    from sae.engine.training.loop import TrainConfig

# SAE recipe for the default (d_in = 4 heads x 32 = 128): `attnscope train`'s own defaults (top-k k=32, 8x wide,
# decoder norms rescaled, AuxK, z scaled to E|z| = sqrt(d_in), b_dec started at the mean), every layer from one pass,
# seed 0. Top-k fixes L0 on every layer whatever its z norms (they differ by ~10x between layers here), where one L1
# coefficient would give the layers very different L0; `attnscope train --architecture standard` remains.


def run(
    out_dir: Path,
    stage: str = "all",
    steps: int = 4000,
    phase2_steps: int = 2500,
    sae_tokens: int = 4_000_000,
    resume: bool = True,
    install: bool = False,
    log: Callable[[str], None] = print,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if stage in ("all", "lm"):
        log(f"[stage lm] training tokenizer and LM for {steps}+{phase2_steps} steps into {out_dir / 'model'}")
        train_lm(out_dir, LMConfig(steps=steps, phase2_steps=phase2_steps), resume=resume, log=log)
    if stage in ("all", "saes"):
        log(f"[stage saes] training one SAE per layer on {sae_tokens:,} tokens into {out_dir / 'saes'}")
        train_default_saes(out_dir, sae_tokens, resume=resume, log=log)
    if stage in ("all", "card"):
        log("[stage card] measuring phenomena and SAE metrics on the held-out split")
        write_card(out_dir, log=log)
    if install:
        install_into_package(out_dir, log=log)


def default_sae_config(layers: list[int], tokens: int) -> "TrainConfig":
    """The shipped SAEs' recipe: every `TrainConfig` default, on `layers`, for `tokens` tokens."""
    from sae.engine.training.loop import TrainConfig

    return TrainConfig(layers=layers, total_tokens=tokens, checkpoint_every=200, seed=0,
                       model_name=zoo.DEFAULT_NAME, corpus="default")


def train_default_saes(out_dir: Path, tokens: int, resume: bool, log: Callable[[str], None]) -> None:
    from sae.engine.training.loop import train_saes
    from sae.engine.zpass import load_gpt2_z_model
    from sae.zoo.token_cache import cached_token_rows

    import torch

    model = load_gpt2_z_model(out_dir / "model", torch.device("cpu"), torch.float32, zoo.DEFAULT_NAME)
    if model is None:
        from sae.engine.models import load_model

        model = load_model(str(out_dir / "model"), device="cpu", display_name=zoo.DEFAULT_NAME)
    rows = cached_token_rows(model, "default", 128, "train")  # the rows `attnscope train` reads
    cfg = default_sae_config(list(range(model.n_layers)), tokens)
    last = [0.0]

    def progress(info) -> None:  # sae.engine.jobs.Progress
        import time

        if time.time() - last[0] > 30:
            last[0] = time.time()
            log(f"{info.stage} {info.done:,.0f}/{info.total:,.0f} tokens {info.note} " + str(dict(info.metrics))[:400])

    resume = resume and (out_dir / "saes" / "checkpoint.pt").exists()
    train_saes(model, rows, cfg, out_dir / "saes", on_progress=progress, resume=resume)


def write_card(out_dir: Path, log: Callable[[str], None] = print) -> str:
    from sae.zoo.measure import measure

    from sae.engine.models import load_model

    ph = measure(load_model(str(out_dir / "model"), device="cpu", display_name=zoo.DEFAULT_NAME))
    atomic_write_text(out_dir / "phenomena.json", json.dumps(ph, indent=2))
    sae_section = ""
    if (out_dir / "saes").exists():
        results = evaluate_default_saes(out_dir / "model", out_dir / "saes")
        atomic_write_text(out_dir / "sae_metrics.json", json.dumps(results, indent=2))
        sae_section = sae_metrics_markdown(results)
    cfg = json.loads((out_dir / "model" / "train_config.json").read_text())
    card = card_markdown(ph, sae_section, cfg)
    atomic_write_text(out_dir / "MODEL_CARD.md", card)
    log(card)
    return card


def evaluate_default_saes(model_dir: Path, saes_dir: Path, max_rows: int = 512) -> list[dict]:
    """Every SAE under `saes_dir` on `max_rows` x 128 held-out tokens."""
    from sae.zoo import corpus
    from sae.engine.activations import pack_tokens
    from sae.engine.formats import load_sae_set
    from sae.engine.metrics import evaluate_saes
    from sae.engine.models import load_model

    model = load_model(str(model_dir), device="cpu", display_name=zoo.DEFAULT_NAME)
    saes = load_sae_set(str(saes_dir), model=model)
    rows = pack_tokens(corpus.documents("heldout"), model.encode, 128, model.bos_token_id, max_rows=max_rows)
    home = Path(saes_dir).resolve().parent
    out = [r.to_dict() for r in evaluate_saes(model, saes, rows)]
    for r in out:  # paths relative to the default's folder (saes/blocks.L.attn.hook_z), not to the build machine
        r["training_tokens"] = (saes[r["layer"]].cfg.extra.get("training") or {}).get("tokens_done")
        p = Path(r.get("path") or "")
        if p.is_absolute() and p.is_relative_to(home):
            r["path"] = str(p.relative_to(home))
    return out


def sae_metrics_markdown(results: list[dict]) -> str:
    lines = [
        "## Attention SAEs (held-out split)",
        "",
        "| hook | d_sae | L0 | explained var. | CE recovered | CE clean / SAE / zero | KL | dead | dense | tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['hook']} | {r['d_sae']} | {r['l0']:.1f} | {r['explained_variance']:.3f} | "
            f"{r['ce_loss_recovered']:.3f} | {r['ce_clean']:.3f} / {r['ce_sae']:.3f} / {r['ce_zero_abl']:.3f} | "
            f"{r['kl']:.4f} | {r['dead_fraction']:.3f} | {r['dense_fraction']:.3f} | {r['tokens']:,} |"
        )
    tokens = {r.get("training_tokens") for r in results} - {None}
    lines += [
        "",
        "Targets (every layer): CE loss recovered >= 0.93, explained variance >= 0.85, dead fraction <= 0.03, dense "
        "(latents firing on more than 10% of tokens) <= 0.01.",
        "",
        "Trained with `attnscope train`'s defaults (top-k, k = 32, 8x wide, AuxK, decoder norms rescaled, z scaled to "
        "E|z| = sqrt(d_in) and the scale folded back into the saved weights), seed 0"
        + (f", {max(tokens):,} tokens" if tokens else "") + "; rebuild with `attnscope zoo train-default --stage saes`.",
        "",
        "z is HookedTransformer's processed hook_z (see the README's numerics section); special-token positions (BOS "
        "and the EOS separators) are left out, as SAELens's run_evals does by default.",
    ]
    return "\n".join(lines)


def card_markdown(ph: dict, sae_section: str, cfg: dict) -> str:
    from sae.zoo.measure import phenomena_markdown

    return "\n".join(
        [
            "# attnscope-default: model card",
            "",
            "A small GPT-2-architecture causal LM trained on this project's offline corpus (Python standard library "
            "modules and pydoc topics, plus generated IOI sentences and repeated spans) so that attnscope has a real "
            "model with induction, previous-token and IOI behaviour on a machine with no model hub. "
            "Rebuild with `attnscope zoo train-default --install`; every figure below is printed by "
            "`attnscope zoo measure` and `attnscope eval`.",
            "",
            "## Architecture and training",
            "",
            f"- {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['n_head']} heads x d_head "
            f"{cfg['d_model'] // cfg['n_head']}, d_mlp {cfg['d_mlp']}, context {cfg['n_ctx']}, byte-level BPE "
            f"vocabulary {cfg['vocab_size']}, tied embeddings, weights stored in fp16.",
            f"- {cfg['steps']} steps of {cfg['batch_size']} x {cfg['n_ctx']} tokens, AdamW lr {cfg['lr']} "
            f"(warm-up {cfg['warmup_steps']}, cosine to {cfg['min_lr']}), betas {tuple(cfg['betas'])}, no weight "
            f"decay or dropout, grad clip {cfg['grad_clip']}, seed {cfg['seed']}.",
            f"- Phase-1 batches: {cfg['periodic_rows']} rows of periodic random-token blocks, {cfg['repeat_rows']} "
            f"rows of natural text with a span repeated, {cfg['ioi_rows']} rows of IOI sentences (training templates "
            f"and name pairs only), the rest natural text.",
            f"- Phase 2: {cfg.get('phase2_steps', 0)} more steps at a constant lr {cfg.get('phase2_lr')} with "
            f"{cfg.get('phase2_prevtoken_rows', 0)} previous-token rows (x[t+1] = g(x[t-1]) over a 64-token "
            f"alphabet, noise between), {cfg.get('phase2_periodic_rows', 0)} periodic, {cfg['repeat_rows']} repeat "
            f"and {cfg.get('phase2_ioi_rows', 0)} IOI rows per batch. Phase 1 formed induction and IOI but left only "
            "a smeared previous-token head (0.33 attention to t-1); phase 2 sharpens it.",
            "",
            phenomena_markdown(ph),
            "",
            sae_section,
            "",
        ]
    )


def install_into_package(out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Copy model files (fp16), SAEs and the card into sae/zoo/default; checkpoints stay behind. The package
    directory is swapped whole (`safe_io.swap_dir`): a kill leaves the old default or the new one."""
    from sae.engine.safe_io import swap_dir

    dest = zoo.DEFAULT_DIR

    def write(tmp: Path) -> None:
        (tmp / "model").mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "train_config.json", "generation_config.json", "special_tokens_map.json"):
            src = out_dir / "model" / name
            if src.exists():
                shutil.copy2(src, tmp / "model" / name)
        for sae_dir in sorted((out_dir / "saes").glob("blocks.*.attn.hook_z")):
            (tmp / "saes" / sae_dir.name).mkdir(parents=True)
            for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
                if (sae_dir / name).exists():
                    shutil.copy2(sae_dir / name, tmp / "saes" / sae_dir.name / name)
        for name in ("MODEL_CARD.md", "phenomena.json", "sae_metrics.json"):
            if (out_dir / name).exists():
                shutil.copy2(out_dir / name, tmp / name)

    swap_dir(dest, write, keep_foreign=False, allow_protected=True)  # the package's own files, replaced whole
    log(f"installed into {dest}")
