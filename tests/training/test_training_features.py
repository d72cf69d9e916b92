"""Training features of issue 13: schedules scaled to the run, normalisation folded into saved weights, AuxK,
sparsity sweeps in one pass, activation caches, the CLI generated from TrainConfig, progress through Progress."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae.engine.activation_cache import CacheError, CacheSource, read_manifest, write_cache
from sae.engine.autoencoder import SAE, SAEConfig, fold_input_scale
from sae.engine.formats import load_sae
from sae.engine.jobs import CancelToken, Progress
from sae.engine.training.schedule import resolve_schedule
from sae.engine.training.config import PAPER_L1, PRESETS, TrainConfig, TrainingError, option_fields
from sae.engine.training.loop import Trainer, train_saes

from support import CTX, count_passes


def cfg(**kw) -> TrainConfig:
    base = dict(layers=[0], d_sae=64, batch_size=64, context_size=CTX, total_tokens=64 * 12, rows_per_pass=4,
                buffer_batches=4, checkpoint_every=0, log_every=1, lr=3e-3, k=4, l1_coeff=0.5)
    base.update(kw)
    return TrainConfig(**base)


def params(sae: SAE) -> dict[str, torch.Tensor]:
    return {n: getattr(sae, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}


# ---- schedule --------------------------------------------------------------------------------------------------


def test_schedule_scales_with_the_run_and_caps_at_the_papers_values():
    short = resolve_schedule(TrainConfig(layers=[0], total_tokens=400_000, batch_size=4096))  # 97 steps
    assert short.total_steps == 97
    assert short.warmup_steps == 5 and short.resample_every == 10 and short.resample_window == 5
    assert short.dead_tokens == 50_000
    assert set(short.chosen) == {"warmup_steps", "resample_every", "resample_window", "dead_tokens"}
    assert not short.warnings()
    long = resolve_schedule(TrainConfig(layers=[0], total_tokens=2_000_000_000, batch_size=4096))
    assert (long.warmup_steps, long.resample_every, long.resample_window, long.dead_tokens) == (1000, 25_000, 12_500, 10_000_000)
    given = resolve_schedule(TrainConfig(layers=[0], total_tokens=400_000, warmup_steps=1000, resample_every=0))
    assert given.warmup_steps == 1000 and given.resample_every == 0 and "warmup_steps" not in given.chosen
    assert any("too short to finish" in w for w in given.warnings())


def test_warmup_reaches_full_lr_within_a_short_run(tiny_model, rows, tmp_path):
    seen: list[Progress] = []
    train_saes(tiny_model, rows, cfg(total_tokens=64 * 40), tmp_path, on_progress=seen.append)
    lrs = [p.metrics["lr"] for p in seen if p.note == "step"]
    assert lrs[0] < 3e-3 and lrs[-1] == pytest.approx(3e-3)  # warm-up 2 steps of 40


def test_config_errors_name_fields_and_negative_schedules_are_refused():
    for name in ("warmup_steps", "checkpoint_every", "resample_every"):
        with pytest.raises(TrainingError, match=f"^{name} must be >= 0"):
            TrainConfig(layers=[0], **{name: -1})
    with pytest.raises(TrainingError, match="^total_tokens must be positive"):
        TrainConfig(layers=[0], total_tokens=0)
    with pytest.raises(TrainingError, match="^k must be in 1..64"):
        TrainConfig(layers=[0], d_sae=64, k=65)


def test_cli_flags_defaults_and_help_come_from_train_config():
    from sae.cli import build_parser
    from sae.cli.train import flag_of

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # argparse has no public door to its subparsers
    by_dest = {a.dest: a for a in train._actions}
    for f in option_fields():
        action = by_dest[f.name]
        assert flag_of(f) in action.option_strings
        assert f.metadata["help"].split("(")[0].strip()[:30] in action.help.replace("%%", "%")
    assert "default: topk" in by_dest["architecture"].help and "default: 32" in by_dest["k"].help
    help_text = train.format_help()
    for l1 in PAPER_L1:  # the paper's per-layer recipe is documented in --help
        assert f"{l1}" in help_text


def test_cli_prints_the_chosen_schedule_and_warns_on_short_runs(tiny_model_dir, tmp_path, capsys):
    from sae.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x + 1\nThe quick brown fox jumps over the lazy dog.\n" * 300)
    common = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--width", "32",
              "--batch-size", "64", "--context-size", "16", "--buffer-batches", "2", "--k", "4", "--tokens", "640"]
    assert main([*common, "--out", str(tmp_path / "a"), "--json"]) == 0
    err = capsys.readouterr().err
    assert "warm-up 1* steps" in err and "chosen from the run" in err and "warning" not in err
    assert main([*common, "--out", str(tmp_path / "b"), "--warmup-steps", "50", "--json"]) == 0
    assert "too short to finish its 50-step warm-up" in capsys.readouterr().err.replace("\n", " ")


def test_paper_preset_is_the_papers_recipe():
    p = PRESETS["paper"]
    c = TrainConfig(layers=list(range(12)), **p)
    assert c.architecture == "standard" and c.normalize_activations == "none"
    assert [c.width(layer, 768) for layer in range(12)] == [24576] * 5 + [49152, 24576, 49152] + [24576] * 4
    assert [c.l1_for(layer, 1.0) for layer in range(12)] == list(PAPER_L1)
    # betas and the b_dec start: the authors' train.py (the released runs' names give lr, width, L1, batch, resampling)
    assert (c.lr, c.beta1, c.beta2, c.total_tokens, c.batch_size, c.context_size) == (1.2e-3, 0.0, 0.9999, 2e9, 4096, 128)
    assert c.b_dec_init == "zeros"
    s = resolve_schedule(c)
    assert (s.warmup_steps, s.resample_every, s.resample_window) == (1000, 25_000, 12_500) and c.max_resamples == 4
    assert c.decoder_norm == "unit"  # the paper keeps decoder rows at unit norm


def test_decoder_norm_defaults_and_old_configs():
    assert TrainConfig(layers=[0], architecture="topk").decoder_norm == "rescale"
    assert TrainConfig(layers=[0], architecture="topk", decoder_norm="unit").decoder_norm == "unit"
    with pytest.raises(TrainingError, match="^decoder_norm must be one of"):
        TrainConfig(layers=[0], decoder_norm="free")
    # a train_config.json written before decoder_norm existed trained with unit rows; a resume must keep them
    old = TrainConfig(layers=[0], architecture="topk").to_dict()
    del old["decoder_norm"]
    assert TrainConfig.from_dict(old).decoder_norm == "unit"


@pytest.mark.parametrize("arch", ["standard", "topk"])
@pytest.mark.parametrize("init", ["mean", "zeros"])
def test_b_dec_starts_at_the_mean_of_the_first_buffer(tiny_model, rows, tmp_path, arch, init):
    """`b_dec_init="mean"`: b_dec starts at the mean (scaled) activation of the first buffer, computed here again."""
    c = cfg(architecture=arch, normalize_activations="expected_average_only_in", b_dec_init=init)
    trainer = Trainer(tiny_model, rows, c, tmp_path)
    trainer._normalize_setup()
    z = trainer.buffer.storage[0].double()  # [capacity, d_in], the first buffer
    s = math.sqrt(z.shape[-1]) / z.norm(dim=-1).mean().item()
    want = z.mean(0) * s if init == "mean" else torch.zeros(z.shape[-1], dtype=torch.float64)
    torch.testing.assert_close(trainer.units[0].sae.b_dec.double(), want, atol=1e-5, rtol=1e-5)
    assert z.mean(0).norm() > 0.1  # not vacuous


def test_b_dec_auto_rule():
    from sae.engine.training.loop import b_dec_starts_at_mean

    topk, std = TrainConfig(layers=[0], architecture="topk"), TrainConfig(layers=[0], architecture="standard")
    assert b_dec_starts_at_mean(topk, 0.0) and b_dec_starts_at_mean(topk, 0.9)
    assert not b_dec_starts_at_mean(std, 0.15) and b_dec_starts_at_mean(std, 0.6)
    assert b_dec_starts_at_mean(TrainConfig(layers=[0], architecture="standard", b_dec_init="mean"), 0.0)
    assert not b_dec_starts_at_mean(TrainConfig(layers=[0], architecture="topk", b_dec_init="zeros"), 0.9)


def test_rescale_init_is_saelens_heuristic():
    from sae.engine.training.loop import init_sae

    c = TrainConfig(layers=[1], architecture="topk", d_sae=40, k=4)
    sae = init_sae(12, None, "m", 1, c, 4, torch.device("cpu"))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((40,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


# ---- normalisation folded into the saved weights ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_folded_sae_on_raw_x_equals_unfolded_on_scaled_x(arch):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=12, d_sae=30, hook_name="blocks.0.attn.hook_z", architecture=arch,
                        k=5 if arch == "topk" else None))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.5)
        if sae.threshold is not None:
            sae.threshold.uniform_(0, 0.3)
    W_enc, W_dec, b_enc, b_dec = (t.detach().clone() for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))
    thr = sae.threshold.detach().clone() if sae.threshold is not None else None
    s = 2.7
    x = torch.randn(50, 12) * 3
    # the unfolded SAE on s * x, written out here
    pre = torch.einsum("bi,is->bs", s * x - b_dec, W_enc) + b_enc
    if arch == "standard":
        f = pre.clamp_min(0)
    elif arch == "topk":
        kth = pre.sort(-1, descending=True).values[:, 4:5]
        f = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
    else:
        f = torch.where(pre > thr, pre, torch.zeros_like(pre))
    want = (torch.einsum("bs,si->bi", f, W_dec) + b_dec) / s
    fold_input_scale(sae, s)
    torch.testing.assert_close(sae(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), f / s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.W_dec, W_dec)  # decoder rows untouched (unit norm kept)
    assert sae.cfg.normalize_activations == "none"


def _effective_topk(sae, x: torch.Tensor, k: int, rescale: bool) -> torch.Tensor:
    """The function a trained unit computes, written out: with "rescale" the decoder rows are divided by their
    norms n and the encoder columns and b_enc multiplied by them (SAELens's rescale_acts_by_decoder_norm)."""
    with torch.no_grad():
        n = sae.W_dec.norm(dim=-1) if rescale else torch.ones(sae.cfg.d_sae)
        pre = torch.einsum("bi,is->bs", x - sae.b_dec, sae.W_enc * n) + sae.b_enc * n
        kth = pre.sort(-1, descending=True).values[:, k - 1 : k]
        f = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
        return torch.einsum("bs,si->bi", f, sae.W_dec / n[:, None]) + sae.b_dec


@pytest.mark.parametrize("decoder_norm", ["rescale", "unit"])
def test_training_normalises_and_the_saved_sae_reads_raw_z(tiny_model, rows, tmp_path, decoder_norm):
    c = cfg(architecture="topk", normalize_activations="expected_average_only_in", decoder_norm=decoder_norm)
    trainer = Trainer(tiny_model, rows, c, tmp_path)
    trainer.run()
    x = tiny_model.capture_z(rows[:3], [0])[0].reshape(-1, tiny_model.d_z)  # raw z
    # the scale is sqrt(d_in) / mean ||z|| over the first buffer, recomputed here from a fresh buffer
    fresh = Trainer(tiny_model, rows, c, tmp_path / "fresh")
    fresh.buffer.fill()
    z0 = fresh.buffer.storage[0]
    s = math.sqrt(tiny_model.d_z) / z0.norm(dim=-1).mean().item()
    assert trainer.scales[0] == pytest.approx(s, rel=1e-5)
    assert abs(s - 1.0) > 0.05  # the test is not vacuous
    inner = trainer.units[0].sae  # trained on s * z
    norms = inner.W_dec.detach().norm(dim=-1)
    if decoder_norm == "rescale":  # rows really are free, so the fold is not vacuous either
        assert (norms - 1).abs().max() > 0.5
    else:
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    want = _effective_topk(inner, x * s, c.k, decoder_norm == "rescale") / s
    saved = load_sae(tmp_path / "blocks.0.attn.hook_z")
    torch.testing.assert_close(saved(x), want, atol=1e-4, rtol=1e-4)
    assert saved.cfg.normalize_activations == "none"
    assert saved.cfg.extra["training"]["activation_scale"] == pytest.approx(s, rel=1e-5)
    assert saved.cfg.extra["training"]["decoder_norm"] == decoder_norm
    torch.testing.assert_close(saved.W_dec.norm(dim=-1), torch.ones(saved.cfg.d_sae), atol=1e-5, rtol=0)


# ---- AuxK ------------------------------------------------------------------------------------------------------


class SyntheticSource:
    """Activations with no model: sparse positive mixtures of 48 ground-truth directions in 16 dimensions."""

    layers = [0]
    d_in = 16
    n_heads = None
    model_name = "synthetic"
    digest = "synthetic"

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(123)
        self.dirs = torch.nn.functional.normalize(torch.randn(48, 16, generator=g), dim=-1)
        self.g = torch.Generator().manual_seed(seed)

    def next_chunk(self) -> torch.Tensor:
        n = 512
        idx = torch.randint(0, 48, (n, 3), generator=self.g)
        coef = torch.rand(n, 3, generator=self.g) + 0.5
        x = (coef.unsqueeze(-1) * self.dirs[idx]).sum(1)
        return x.unsqueeze(0)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, s: dict) -> None:
        pass


def _kill_and_train(tmp_path, aux_coeff: float, decoder_norm: str = "rescale") -> float:
    c = TrainConfig(layers=[0], architecture="topk", d_sae=64, k=4, batch_size=256, total_tokens=256 * 300,
                    buffer_batches=4, lr=5e-3, dead_tokens=1024, aux_coeff=aux_coeff, aux_k=16, log_every=0,
                    checkpoint_every=0, normalize_activations="none", decoder_norm=decoder_norm)
    trainer = Trainer(None, None, c, tmp_path, source=SyntheticSource())
    weak = torch.arange(32, 64)
    with torch.no_grad():  # latents 32..63 start with encoders 1000x too small: top-k never picks them
        trainer.units[0].sae.W_enc[:, weak] *= 1e-3
    trainer.run()
    tr = trainer.units[0].tracker
    alive = tr.tokens_since_fired[weak] < c.dead_tokens
    return alive.float().mean().item()


@pytest.mark.parametrize("decoder_norm", ["rescale", "unit"])
def test_auxk_revives_latents_built_to_be_dead(tmp_path, decoder_norm):
    without = _kill_and_train(tmp_path / "off", aux_coeff=0.0, decoder_norm=decoder_norm)
    with_aux = _kill_and_train(tmp_path / "on", aux_coeff=1 / 32, decoder_norm=decoder_norm)
    assert without == 0.0  # no gradient ever reaches them
    # 48 true directions and 32 live latents leave work for about 16 of the 32 killed ones
    assert with_aux >= 0.4, with_aux


def test_topk_init_is_the_transposed_decoder_with_unit_rows():
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=12, d_sae=40, hook_name="blocks.0.attn.hook_z", architecture="topk", k=4))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(40))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


# ---- sweeps ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, values", [("topk", [2, 4, 8]), ("standard", [0.1, 1.0])])
def test_sweep_gives_each_point_the_weights_of_a_separate_run(tiny_model, rows, tmp_path, arch, values):
    key = "k" if arch == "topk" else "l1_coeff"
    with count_passes(tiny_model) as passes:
        trainer = Trainer(tiny_model, rows, cfg(architecture=arch, layers=[0, 1], **{key: values}), tmp_path / "sweep")
        outcome = trainer.run()
        n_sweep = passes["n"]
        passes["n"] = 0
        separate = {}
        for v in values:
            separate[v] = train_saes(tiny_model, rows, cfg(architecture=arch, layers=[0, 1], **{key: v}), tmp_path / f"one{v}")
        assert passes["n"] == n_sweep * len(values)  # the sweep cost the model passes of one run
    labels = [f"k{v}" for v in values] if arch == "topk" else [f"l1_{v:g}" for v in values]
    assert sorted(outcome.sweep) == sorted(labels)
    for v, label in zip(values, labels):
        for layer in (0, 1):
            for name, p in params(outcome.sweep[label][layer]).items():
                torch.testing.assert_close(p, params(separate[v][layer])[name], atol=1e-6, rtol=0)
            assert (tmp_path / "sweep" / label / f"blocks.{layer}.attn.hook_z" / "cfg.json").is_file()


def test_sweep_frontier_choice_and_plot():
    from sae.engine.training.sweep import SweepPoint, choose_point, text_plot

    pts = [SweepPoint("k8", 8, {0: {"l0": 8, "explained_variance": 0.7, "ce_loss_recovered": 0.85}}),
           SweepPoint("k16", 16, {0: {"l0": 16, "explained_variance": 0.82, "ce_loss_recovered": 0.91}}),
           SweepPoint("k32", 32, {0: {"l0": 32, "explained_variance": 0.9, "ce_loss_recovered": 0.96}})]
    assert choose_point(pts).label == "k16"  # the sparsest point over the bar
    plot = text_plot(pts)
    assert "*" in plot and "* = k16" in plot and "a = k8" in plot


def test_cli_sweep_prints_the_frontier(tiny_model_dir, tmp_path, capsys):
    from sae.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x + 1\nThe quick brown fox jumps over the lazy dog.\n" * 300)
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0,1", "--width", "32",
               "--batch-size", "64", "--context-size", "16", "--buffer-batches", "2", "--k", "2,4", "--tokens", "640",
               "--eval-tokens", "256", "--out", str(tmp_path / "s"), "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in data["sweep"]] == ["k2", "k4"]
    assert sum(p["chosen"] for p in data["sweep"]) == 1
    for p in data["sweep"]:
        assert set(p["layers"]) == {"0", "1"} and p["mean_l0"] <= p["value"] + 1e-6
        assert p["mean_ce_loss_recovered"] == p["mean_ce_loss_recovered"]  # scored with the model (not NaN)
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--width", "32",
               "--batch-size", "64", "--context-size", "16", "--buffer-batches", "2", "--k", "2,4", "--tokens", "640",
               "--eval-tokens", "256", "--out", str(tmp_path / "s2"), "--md"])
    text = capsys.readouterr().out
    assert rc == 0 and "| point |" in text and "<- chosen" in text and "mean L0" in text


# ---- activation caches -----------------------------------------------------------------------------------------


def test_cache_manifest_and_training_from_it_matches_the_model(tiny_model, rows, tmp_path):
    cache = tmp_path / "cache"
    m = write_cache(tiny_model, rows, [0, 2], cache, dtype="float32", rows_per_shard=10, rows_per_pass=4,
                    corpus="test-rows")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["layers"] == [0, 2] and manifest["tokens"] == rows.numel() and manifest["dtype"] == "float32"
    assert manifest["hooks"] == ["blocks.0.attn.hook_z", "blocks.2.attn.hook_z"] and "value bias" in manifest["z_convention"]
    assert len(manifest["shards"]) == 5 and m.model == tiny_model.name
    # the cached z is the model's z
    src = CacheSource(cache, [0, 2], rows_per_pass=4, seed=0)
    torch.testing.assert_close(src.tokens(), rows)
    want = tiny_model.capture_z(rows[13:14], [2])[2].reshape(-1, tiny_model.d_z)
    from safetensors import safe_open

    with safe_open(str(cache / "shard_00001.safetensors"), framework="pt") as f:
        got = f.get_tensor("blocks.2.attn.hook_z")[3]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    c = cfg(layers=[0, 2], architecture="topk", total_tokens=64 * 14)
    from_model = train_saes(tiny_model, rows, c, tmp_path / "model")
    from_cache = train_saes(None, None, c, tmp_path / "fromcache", source=CacheSource(cache, [0, 2], 4, 0))
    for layer in (0, 2):
        for name, p in params(from_cache[layer]).items():
            torch.testing.assert_close(p, params(from_model[layer])[name], atol=1e-5, rtol=1e-4)


def test_cache_fp16_and_errors(tiny_model, rows, tmp_path):
    cache = tmp_path / "c16"
    write_cache(tiny_model, rows, [1], cache, dtype="float16", rows_per_shard=64)
    assert read_manifest(cache).dtype == "float16"
    chunk = CacheSource(cache, [1], 4, 0).next_chunk()
    assert chunk.shape == (1, 4 * (CTX - 1), tiny_model.d_z) and chunk.dtype == torch.float32  # BOS left out
    with pytest.raises(CacheError, match="already holds"):
        write_cache(tiny_model, rows, [1], cache)
    with pytest.raises(CacheError, match="not 0"):
        CacheSource(cache, [0], 4, 0)
    with pytest.raises(CacheError, match="not an activation cache"):
        read_manifest(tmp_path)


def test_cli_cache_then_train_from_it(tiny_model_dir, tmp_path, capsys):
    from sae.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x + 1\nThe quick brown fox jumps over the lazy dog.\n" * 300)
    assert main(["cache", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0,1",
                 "--tokens", "2048", "--context-size", "16", "--out", str(tmp_path / "acts"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"] == 2048 and data["dtype"] == "float16"
    assert main(["train", "--activations", str(tmp_path / "acts"), "--width", "32", "--batch-size", "64",
                 "--context-size", "16", "--buffer-batches", "2", "--k", "4", "--tokens", "640",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in out["layers"]] == [0, 1] and out["status"] == "finished"


# ---- progress and cancel ---------------------------------------------------------------------------------------


def test_progress_rate_counts_only_this_process_and_cancel_token_stops_with_checkpoint(tiny_model, rows, tmp_path):
    c = cfg(total_tokens=64 * 10, architecture="topk")
    token = CancelToken()

    def stop_at_4(p: Progress) -> None:
        if p.stage == "step 4/10" and p.note == "step":
            token.cancel()

    outcome = Trainer(tiny_model, rows, c, tmp_path, on_progress=stop_at_4, cancel=token).run()
    assert outcome.status == "cancelled" and outcome.step == 4 and (tmp_path / "checkpoint.pt").is_file()
    seen: list[Progress] = []
    t = Trainer(tiny_model, rows, c, tmp_path, on_progress=seen.append)
    t.resume()
    t.run()
    start = seen[0]
    assert start.note == "start" and start.done == 4 * 64 and start.rate is None and start.eta_s is None
    assert all(p.job == "train" and p.unit == "tokens" and p.total == 640 for p in seen)
    assert seen[-1].note == "finished" and seen[-1].done == 640


def test_token_cache_serves_a_second_run_without_tokenising(tiny_model, tmp_path, monkeypatch):
    import sae.zoo.token_cache as tc

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 200)
    first = tc.cached_token_rows(tiny_model, str(corpus), CTX)
    want = tc.corpus_token_rows(tiny_model, str(corpus), CTX)
    assert torch.equal(first, want) and first.dtype == torch.long

    def boom(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(tc, "corpus_token_rows", boom)
    second = tc.cached_token_rows(tiny_model, str(corpus), CTX)
    assert torch.equal(second, want) and second.dtype == torch.long
    corpus.write_text("something else entirely, longer than before " * 100)  # a changed corpus is re-read
    with pytest.raises(AssertionError, match="tokenised again"):
        tc.cached_token_rows(tiny_model, str(corpus), CTX)
