"""Long- vs short-prefix induction heads (Kissane et al., section on GPT-2 Small heads 5.1 and 5.5).

Synthetic study (as the paper ran it): 400 sequences per prefix length of distinct random tokens in which a prefix
of `p` tokens, followed by a token `y`, appears once and is repeated later, both copies at random (seeded)
positions; random tokens follow the repeat. The query is the last token of the repeat; its *induction score* is the
attention it pays to `y`'s position in the first copy (the token after the earlier occurrence of the prefix), and
its *direct logit attribution* (DLA) is the head's output at the query, through the final LayerNorm with its scale
frozen, dotted with the **vocabulary-centred** unembedding of `y` (`W_U[:, y] - mean_v W_U[:, v]`, so a direction
that raises every logit alike scores 0). A long-prefix head needs several matching tokens before it attends; a
short-prefix head attends already when only one token matches.

Two samplings of the synthetic sequences (`SAMPLINGS`): "attnscope" draws the repeat's start `b` first and the
first copy's start `a` before it, from non-special tokens, each prefix length seeded on its own; "paper" is the
paper's `get_avg_prefix_score_for_head`: `torch.randperm(d_vocab)[:seq_len]` (the whole vocabulary) with BOS at 0,
`a1 ~ U[1, seq_len - 30]`, `a2 ~ U[a1 + p + 1, seq_len - p - 1]`, one torch generator and one Python `random` seeded
once for all prefix lengths in order. The paper's sampling puts the query later (mean position ~92 vs ~69 at 128).

Real-text study: where a head attends more than 0.3 to a non-BOS source on held-out text, how many tokens before
the destination match the tokens before the source (the matched prefix length); then, for matches of length two or
more, the token at `src - 2` is replaced by a random token and the head's attention to `src` is measured again.
Two matchings (`MATCHINGS`): "every-exact" (attnscope: every event, tokens equal) and "first-fuzzy" (the paper's
`check_long_prefix_by_attn`: the first event of each row, tokens equal up to a leading space or case).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from sae.engine.activations import pack_tokens, usable_token_ids
from sae.engine.jobs import CancelToken, ProgressFn, Steps
from sae.analysis.dfa import pattern_hook_name
from sae.analysis.fuzzy import FuzzyMatch
from sae.engine.models import LoadedModel

PREFIX_LENGTHS: tuple[int, ...] = tuple(range(1, 10))
# Mean score over the longest prefixes for a head to count as an induction head. Uniform attention over a
# 128-token sequence gives 0.008; GPT-2 Small's 5.1 and 5.5 reach ~0.7, the embedded default's layer-2 heads
# 0.35-0.7 with the repeat at random positions (their score falls as more random tokens precede the query).
INDUCTION_THRESHOLD = 0.15
SHORT_FRACTION = 0.5  # a short-prefix head already reaches this fraction of its long-prefix score at lengths 1-2


N_SEQUENCES = 400  # sequences per prefix length, as in the paper
SAMPLINGS: dict[str, str] = {
    "attnscope": "the repeat's start drawn first at random, the first copy at random before it; distinct "
                 "non-special tokens; each prefix length seeded on its own",
    "paper": "the paper's: the first copy at a1 ~ U[1, seq_len-30], the repeat at a2 ~ U[a1+p+1, seq_len-p-1]; "
             "tokens a random permutation of the whole vocabulary; one seed for all prefix lengths in order",
}
MATCHINGS: dict[str, str] = {
    "every-exact": "every attention event (> threshold to a non-BOS source), prefix tokens equal",
    "first-fuzzy": "the paper's: the first event of each row per head, prefix tokens equal up to a leading space "
                   "or case (its check_fuzzy_match)",
}


def classification_rule(threshold: float = INDUCTION_THRESHOLD) -> str:
    return (
        f"induction head: mean score over the three longest prefix lengths >= {threshold:g}; "
        f"long-prefix: its mean score at prefix lengths 1-2 is below {SHORT_FRACTION:g} x that long-prefix score, "
        f"short-prefix otherwise (at 1-2 >= {SHORT_FRACTION:g} x)"
    )


CLASSIFICATION_RULE = classification_rule()
ATTENTION_THRESHOLD = 0.3  # real text: an attention event is a weight above this to a non-BOS source


_vocab_pool = usable_token_ids  # the name the tests and the real-text study use


# ---- synthetic sequences ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatedPrefixBatch:
    """`tokens [n, seq_len]`: BOS, then distinct random ids except that one run of `prefix_len` ids occurs twice.

    Both copies sit at random positions. `query [n]` is the position of the last token of the second copy; `key [n]`
    is the position of the token that followed the first copy, and `target [n]` that token's id (the correct next
    token at the query).
    """

    tokens: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    target: torch.Tensor
    prefix_len: int


def repeat_positions(prefix_len: int, seq_len: int, generator: torch.Generator) -> tuple[int, int]:
    """Random `(a, b)`: the first copy at `a .. a+p-1` (followed by the key at `a+p`), the second at `b .. b+p-1`.

    `1 <= a`, `a + p + 1 <= b` (the key precedes the repeat, which does not touch it), `b + p <= seq_len`. `b` is
    drawn uniformly from its range, then `a` uniformly given `b`."""
    p = prefix_len
    b = int(torch.randint(p + 2, seq_len - p + 1, (1,), generator=generator))
    a = int(torch.randint(1, b - p, (1,), generator=generator))
    return a, b


def repeated_prefix_batch(pool: torch.Tensor, bos_id: int, n: int, prefix_len: int, seq_len: int, generator: torch.Generator) -> RepeatedPrefixBatch:
    """Build `n` sequences whose only repeated run is a prefix of exactly `prefix_len` tokens, at random positions.

    All tokens outside the repeat are distinct, so the tokens before the two copies differ and no longer match
    exists. `pool` holds the usable ids and must have at least `seq_len - 1 - prefix_len` of them.
    """
    p = prefix_len
    n_distinct = seq_len - 1 - p  # every position but BOS and the second copy
    if p < 1 or seq_len < 2 * p + 3:
        raise ValueError(f"prefix length {p} does not fit a sequence of {seq_len} tokens")
    if len(pool) < n_distinct:
        raise ValueError(f"the vocabulary has {len(pool)} usable tokens; {n_distinct} distinct ones are needed")
    rows, queries, keys, targets = [], [], [], []
    for _ in range(n):
        body = pool[torch.randperm(len(pool), generator=generator)[:n_distinct]].tolist()
        a, b = repeat_positions(p, seq_len, generator)
        # positions 1..b-1 and b+p..seq_len-1 take distinct tokens; the second copy repeats positions a..a+p-1
        row = [bos_id] + body[: b - 1]
        row += row[a : a + p]
        row += body[b - 1 :]
        rows.append(torch.tensor(row, dtype=torch.long))
        queries.append(b + p - 1)
        keys.append(a + p)
        targets.append(row[a + p])
    return RepeatedPrefixBatch(torch.stack(rows), torch.tensor(queries), torch.tensor(keys), torch.tensor(targets), p)


def paper_batch(d_vocab: int, bos_id: int, n: int, prefix_len: int, seq_len: int, generator: torch.Generator,
                rng: random.Random) -> RepeatedPrefixBatch:
    """`n` sequences drawn as the paper's `get_avg_prefix_score_for_head` draws them, draw for draw.

    Per sequence: `torch.randperm(d_vocab)[:seq_len]` from `generator`, BOS at 0, `a1 = rng.randint(1, seq_len-30)`,
    `a2 = rng.randint(a1+p+1, seq_len-(p+1))`, then `tokens[a2:a2+p] = tokens[a1:a1+p]`. Query `a2+p-1`, key `a1+p`.
    """
    p = prefix_len
    if p < 1 or seq_len < 31 or seq_len - 30 + p + 1 > seq_len - p - 1:
        raise ValueError(f"the paper's sampling needs seq_len >= 31 and prefix length <= 14 (got {seq_len}, {p})")
    if d_vocab < seq_len:
        raise ValueError(f"the vocabulary ({d_vocab}) is smaller than a sequence ({seq_len})")
    rows, queries, keys, targets = [], [], [], []
    for _ in range(n):
        row = torch.randperm(d_vocab, generator=generator)[:seq_len].clone()
        row[0] = bos_id
        a1 = rng.randint(1, seq_len - 30)
        a2 = rng.randint(a1 + p + 1, seq_len - (p + 1))
        row[a2 : a2 + p] = row[a1 : a1 + p].clone()
        rows.append(row)
        queries.append(a2 + p - 1)
        keys.append(a1 + p)
        targets.append(int(row[a1 + p]))
    return RepeatedPrefixBatch(torch.stack(rows), torch.tensor(queries), torch.tensor(keys), torch.tensor(targets), p)


def induction_scores_from_pattern(pattern_rows: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Attention from the query to each example's key.

    pattern_rows: `[batch, head, key_pos]`, the query's row of the pattern; key: `[batch]`. Returns `[batch, head]`.
    """
    idx = key.view(-1, 1, 1).expand(-1, pattern_rows.shape[1], 1).to(pattern_rows.device)
    return pattern_rows.gather(-1, idx).squeeze(-1)


def final_ln_direct(model: LoadedModel, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The final LayerNorm as a linear map with its scale frozen: `x [..., d_model]`, `scale [..., 1]`.

    LayerNorm centres and divides by the scale of the full residual stream, then multiplies by its weight; the bias
    belongs to no component. RMSNorm only divides and multiplies.
    """
    norm_type = str(getattr(model.cfg, "normalization_type", "LN") or "LN")
    if norm_type.startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    x = x / scale
    ln = model.bridge.ln_final
    w = getattr(getattr(ln, "original_component", ln), "weight", None)
    return x * w if w is not None else x


def centred_unembed(w_u: torch.Tensor) -> torch.Tensor:
    """`W_U [d_model, d_vocab]` minus its mean over the vocabulary: a logit difference to the average token."""
    return w_u - w_u.mean(dim=1, keepdim=True)


@torch.no_grad()
def head_dla(model: LoadedModel, z: torch.Tensor, layer: int, scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Vocabulary-centred direct logit attribution of each head of `layer` to `target`.

    z: `[batch, n_heads, d_head]` at the query, value bias removed; scale: `[batch, 1]` final-LN scale at the query;
    target: `[batch]` token ids. Returns `[batch, n_heads]`: each head's output through the frozen final LayerNorm,
    dotted with `W_U[:, target] - mean_v W_U[:, v]`.
    """
    w_o = model.bridge.W_O[layer].to(z.dtype)  # [head, d_head, d_model]
    out = torch.einsum("bhe,hem->bhm", z, w_o)
    resid = final_ln_direct(model, out, scale.unsqueeze(1))
    w_uc = centred_unembed(model.bridge.W_U.to(resid.dtype))
    w_u = w_uc[:, target.to(w_uc.device)].T  # [batch, d_model]
    return torch.einsum("bhm,bm->bh", resid, w_u)


@dataclass(frozen=True)
class HeadInduction:
    layer: int
    head: int
    scores: dict[str, float]  # prefix length -> mean induction score
    dla: dict[str, float]  # prefix length -> mean vocabulary-centred direct logit attribution to the correct token
    kind: str  # "long-prefix", "short-prefix" or "not induction"


@dataclass(frozen=True)
class SyntheticInduction:
    model: str
    n_per_length: int
    seq_len: int
    prefix_lengths: list[int]
    seed: int
    rule: str
    heads: list[HeadInduction] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)  # the numbers in `rule`
    sampling: str = "attnscope"  # a key of SAMPLINGS
    design: str = (
        "the repeated prefix and its second copy at random (seeded) positions among distinct random tokens; "
        "DLA vocabulary-centred (W_U minus its mean over the vocabulary)"
    )
    mean_query_pos: float = 0.0  # the mean position of the query over every sequence

    def induction_heads(self) -> list[HeadInduction]:
        """Heads classed as induction heads, highest long-prefix score first."""
        found = [h for h in self.heads if h.kind != "not induction"]
        return sorted(found, key=lambda h: -_long_score(h.scores))

    def to_dict(self) -> dict:
        return asdict(self)


def _long_score(scores: dict[str, float]) -> float:
    keys = sorted(scores, key=int)[-3:]
    return sum(scores[k] for k in keys) / len(keys)


def classify(scores: dict[str, float], threshold: float = INDUCTION_THRESHOLD) -> str:
    """Apply `classification_rule(threshold)` to one head's `{prefix length: score}`."""
    long = _long_score(scores)
    if long < threshold:
        return "not induction"
    short_keys = [k for k in scores if int(k) <= 2] or [min(scores, key=int)]
    short = sum(scores[k] for k in short_keys) / len(short_keys)
    return "long-prefix" if short < SHORT_FRACTION * long else "short-prefix"


def synthetic_induction(
    model: LoadedModel,
    n: int = N_SEQUENCES,
    prefix_lengths: Sequence[int] = PREFIX_LENGTHS,
    seq_len: int = 128,
    seed: int = 0,
    batch_size: int = 32,
    threshold: float = INDUCTION_THRESHOLD,
    sampling: str = "attnscope",
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> SyntheticInduction:
    """Induction score and DLA of every head at each prefix length, `n` sequences per length, drawn by `sampling`
    (a key of `SAMPLINGS`)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if n <= 0:
        raise ValueError(f"the number of sequences per prefix length must be positive, got {n}")
    seq_len = min(seq_len, model.n_ctx)
    lengths = sorted(set(int(p) for p in prefix_lengths))
    if not lengths or lengths[0] < 1:
        raise ValueError("prefix lengths must be >= 1")
    pool = _vocab_pool(model)
    L, H = model.n_layers, model.n_heads
    n_batches = -(-n // batch_size)
    steps = Steps("induction", len(lengths) * n_batches, on_progress, cancel, unit="batches")
    score_sum = torch.zeros(len(lengths), L, H, dtype=torch.float64)
    dla_sum = torch.zeros(len(lengths), L, H, dtype=torch.float64)
    query_sum = 0
    paper_gen, paper_rng = torch.Generator().manual_seed(seed), random.Random(seed)  # the paper: seeded once
    for li, p in enumerate(lengths):
        gen = torch.Generator().manual_seed(seed * 1000 + p)  # attnscope: each length reproducible on its own
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            if sampling == "paper":
                batch = paper_batch(model.d_vocab, model.bos_token_id, b, p, seq_len, paper_gen, paper_rng)
            else:
                batch = repeated_prefix_batch(pool, model.bos_token_id, b, p, seq_len, gen)
            query_sum += int(batch.query.sum())
            s, d = _score_batch(model, batch)
            score_sum[li] += s.sum(0).double()
            dla_sum[li] += d.sum(0).double()
            done += b
            steps.step()
    score_mean, dla_mean = score_sum / n, dla_sum / n
    heads = []
    for layer in range(L):
        for head in range(H):
            scores = {str(p): float(score_mean[i, layer, head]) for i, p in enumerate(lengths)}
            dla = {str(p): float(dla_mean[i, layer, head]) for i, p in enumerate(lengths)}
            heads.append(HeadInduction(layer, head, scores, dla, classify(scores, threshold)))
    design = ("the paper's sampling: " if sampling == "paper" else "") + SAMPLINGS[sampling] + (
        "; DLA vocabulary-centred (W_U minus its mean over the vocabulary)")
    return SyntheticInduction(
        model.name, n, seq_len, lengths, seed, classification_rule(threshold), heads,
        thresholds={"induction_score": threshold, "short_fraction": SHORT_FRACTION}, sampling=sampling,
        design=design, mean_query_pos=query_sum / (n * len(lengths)),
    )


@torch.no_grad()
def _score_batch(model: LoadedModel, batch: RepeatedPrefixBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """`([batch, layer, head] induction scores, [batch, layer, head] DLA)` for one batch of sequences."""
    b_idx = torch.arange(batch.tokens.shape[0])
    q = batch.query
    rows: dict[int, torch.Tensor] = {}
    zs: dict[int, torch.Tensor] = {}
    grabbed: dict[str, torch.Tensor] = {}

    def grab_pattern(pattern: torch.Tensor, hook) -> None:
        rows[int(hook.name.split(".")[1])] = pattern[b_idx.to(pattern.device), :, q.to(pattern.device), :].detach().float()

    def grab_z(z: torch.Tensor, hook) -> None:
        layer = int(hook.name.split(".")[1])
        zs[layer] = (z[b_idx.to(z.device), q.to(z.device)] - model.z_offset(layer)).detach().float()

    def grab_scale(scale: torch.Tensor, hook) -> None:
        grabbed["scale"] = scale[b_idx.to(scale.device), q.to(scale.device)].detach().float()

    hooks = []
    for layer in range(model.n_layers):
        hooks.append((pattern_hook_name(layer), grab_pattern))
        hooks.append((f"blocks.{layer}.attn.hook_z", grab_z))
    hooks.append(("ln_final.hook_scale", grab_scale))
    with torch.no_grad():
        model.bridge.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=hooks, return_type=None)
    scores = torch.stack([induction_scores_from_pattern(rows[l], batch.key) for l in range(model.n_layers)], 1)
    dla = torch.stack(
        [head_dla(model, zs[l], l, grabbed["scale"], batch.target).float() for l in range(model.n_layers)], 1
    )
    return scores.cpu(), dla.cpu()


# ---- real text ---------------------------------------------------------------------------------------------


def matched_prefix_length(tokens: Sequence[int], dst: int, src: int,
                          same: Callable[[int, int], bool] | None = None) -> int:
    """How many tokens ending at `dst` equal the tokens ending at `src - 1` (BOS at 0 never counts).

    An induction head at `dst` attends to `src` because `tokens[src - 1] == tokens[dst]`; a longer match also
    has `tokens[src - 2] == tokens[dst - 1]`, and so on. `same(dst_token, src_token)` replaces equality (the
    paper's fuzzy match: `FuzzyMatch`).
    """
    m = 0
    while src - 1 - m >= 1 and dst - m >= 1:
        a, b = tokens[dst - m], tokens[src - 1 - m]
        if not (a == b if same is None else same(a, b)):
            break
        m += 1
    return m


def _hist_key(m: int) -> str:
    return str(m) if m < 4 else "4+"


@dataclass(frozen=True)
class HeadRealText:
    layer: int
    head: int
    n_events: int  # (destination, source) pairs with attention > threshold, source not BOS
    n_induction: int  # of those, matched prefix length >= 1
    prefix_hist: dict[str, int]  # matched prefix length ("0", "1", "2", "3", "4+") -> events
    mean_prefix: float  # over induction events
    n_intervened: int  # events with a match of length >= 2 whose src-2 token was replaced
    attn_before: float  # mean attention to src over those events, clean
    attn_after: float  # ... with the token at src-2 replaced by a random token


@dataclass(frozen=True)
class RealTextInduction:
    model: str
    n_rows: int
    seq_len: int
    threshold: float
    seed: int
    source: str
    heads: list[HeadRealText] = field(default_factory=list)
    matching: str = "every-exact"  # a key of MATCHINGS

    def to_dict(self) -> dict:
        return asdict(self)


def real_text_induction(
    model: LoadedModel,
    texts: Sequence[str],
    n_rows: int = 16,
    seq_len: int = 128,
    threshold: float = ATTENTION_THRESHOLD,
    max_events_per_head: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    source: str = "held-out text",
    matching: str = "every-exact",
    rows: torch.Tensor | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> RealTextInduction:
    """Matched prefix lengths of strong attention on `texts`, and the src-2 replacement test, per head.

    matching (a key of `MATCHINGS`): "every-exact" counts every event with exact token matching; "first-fuzzy" the
    first event of each row per head with the paper's fuzzy matching (`FuzzyMatch`). `rows [n, seq]` (BOS first)
    replaces the rows packed from `texts`."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {', '.join(MATCHINGS)}, got {matching!r}")
    same = None
    if matching == "first-fuzzy":
        tok = model.tokenizer
        same = FuzzyMatch(lambda t: tok.decode([t]), model.encode)
    seq_len = min(seq_len, model.n_ctx)
    if rows is None:
        rows = pack_tokens(texts, model.encode, seq_len, model.bos_token_id, max_rows=n_rows)
    else:
        seq_len = rows.shape[1]
    if len(rows) == 0:
        raise ValueError(f"the text is shorter than one row of {seq_len} tokens")
    L, H = model.n_layers, model.n_heads
    n_batches = -(-len(rows) // batch_size)
    steps = Steps("induction", 2 * n_batches, on_progress, cancel, unit="batches")
    events: dict[tuple[int, int], list[tuple[int, int, int, float, int]]] = {(l, h): [] for l in range(L) for h in range(H)}
    toks_list = rows.tolist()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pats = model.attention_patterns(chunk)  # [layer, batch, head, q, k]
        hits = ((pats > threshold) & (torch.arange(pats.shape[-1]) > 0)).nonzero().tolist()  # (l, b, h, dst, src) order
        seen: set[tuple[int, int, int]] = set()
        for l, b, h, dst, src in hits:
            if matching == "first-fuzzy":
                if (l, b, h) in seen:
                    continue
                seen.add((l, b, h))
            row = start + b
            m = matched_prefix_length(toks_list[row], dst, src, same)
            events[(l, h)].append((row, dst, src, float(pats[l, b, h, dst, src]), m))
        steps.step()

    rng = random.Random(seed)
    pool = _vocab_pool(model).tolist()
    jobs: list[tuple[int, int, int, int, int, float]] = []  # layer, head, row, dst, src, before
    for (l, h), evs in events.items():
        eligible = [e for e in evs if e[4] >= 2 and e[2] - 2 >= 1]
        if len(eligible) > max_events_per_head:
            eligible = rng.sample(eligible, max_events_per_head)
        for row, dst, src, a, _ in eligible:
            jobs.append((l, h, row, dst, src, a))
    after = _attention_after_replacement(model, rows, jobs, pool, rng, batch_size, steps, n_batches)

    heads: list[HeadRealText] = []
    for l in range(L):
        for h in range(H):
            evs = events[(l, h)]
            hist = {k: 0 for k in ("0", "1", "2", "3", "4+")}
            for e in evs:
                hist[_hist_key(e[4])] += 1
            ind = [e[4] for e in evs if e[4] >= 1]
            mine = [(j[5], a) for j, a in zip(jobs, after) if (j[0], j[1]) == (l, h)]
            heads.append(
                HeadRealText(
                    layer=l, head=h, n_events=len(evs), n_induction=len(ind), prefix_hist=hist,
                    mean_prefix=sum(ind) / len(ind) if ind else 0.0, n_intervened=len(mine),
                    attn_before=sum(b for b, _ in mine) / len(mine) if mine else 0.0,
                    attn_after=sum(a for _, a in mine) / len(mine) if mine else 0.0,
                )
            )
    return RealTextInduction(model.name, len(rows), seq_len, threshold, seed, source, heads, matching)


def _attention_after_replacement(
    model: LoadedModel,
    rows: torch.Tensor,
    jobs: list[tuple[int, int, int, int, int, float]],
    pool: list[int],
    rng: random.Random,
    batch_size: int,
    steps: Steps,
    planned_batches: int,
) -> list[float]:
    """For each job, the head's attention dst -> src once the token at src-2 is replaced by a random token."""
    n_batches = -(-len(jobs) // batch_size)
    steps.total += n_batches - planned_batches  # the number of interventions is known only now
    out: list[float] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        toks = rows[[j[2] for j in chunk]].clone()
        for i, (_, _, _, dst, src, _) in enumerate(chunk):
            old, avoid = int(toks[i, src - 2]), int(toks[i, dst - 1])
            new = old
            while new in (old, avoid):
                new = rng.choice(pool)
            toks[i, src - 2] = new
        pats = model.attention_patterns(toks)
        out.extend(float(pats[l, i, h, dst, src]) for i, (l, h, _, dst, src, _) in enumerate(chunk))
        steps.step()
    if not jobs:
        steps.step(0)
    return out
