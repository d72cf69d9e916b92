"""Indirect-object-identification sentences from Wang et al. (2023)'s templates.

A prompt is a template with two names: the indirect object (IO, named once before the end) and the subject
(S, named twice). ABBA order names IO first ("When Mary and John ..., John gave a drink to" -> " Mary"),
BABA names S first. The last word (IO) is the answer and is not part of the prompt text.

The templates and name pairs are split into a training part (mixed into the embedded default's corpus) and a
held-out part that never appears in its training text; the model card's IOI figure is measured on the held-out part.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from sae.engine.errors import AttnscopeError

# [A] is the IO, [B] the subject; written in BABA order (S first), ABBA swaps the first pair.
BABA_TEMPLATES: list[str] = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]

# Indices of templates that never appear in the embedded default's training text.
HELDOUT_TEMPLATES: tuple[int, ...] = (2, 6, 9, 13)

PLACES: list[str] = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "library", "market", "beach",
]
OBJECTS: list[str] = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
    "book", "letter", "gift", "key",
]

NAMES: list[str] = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Paul", "Mark", "Anne", "Sara", "Lisa",
    "Emma", "Jack", "Alex", "Sam", "Ben", "Luke", "Adam", "Eric", "Ryan", "Kevin", "Peter", "David", "Sarah",
    "Laura", "Linda", "Susan", "Karen", "Nancy", "Helen", "Alice", "Rose", "Jane", "Joe", "Bob", "Tim", "Mike",
    "Steve", "Chris", "George", "Henry", "Frank", "Jean", "Anna", "Julia", "Grace", "Lucy", "Ruth", "Carl",
    "Fred", "Max", "Leo", "Ian", "Neil", "Ray", "Roy", "Bill",
]


def is_heldout_pair(a: str, b: str) -> bool:
    """About one unordered name pair in four is held out of training (a fixed hash, independent of order)."""
    key = "|".join(sorted((a, b))).encode()
    return zlib.crc32(key) % 4 == 0


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI sentence. `text` ends just before the answer; `io` and `s` are bare names (no leading space)."""

    text: str
    io: str
    s: str
    order: str  # "ABBA" or "BABA"
    template: int
    place: str
    obj: str

    @property
    def full_text(self) -> str:
        return f"{self.text} {self.io}"


def fill(template: str, io: str, s: str, order: str, place: str, obj: str) -> str:
    """Fill a BABA template; for ABBA the first mention pair is swapped ("[A] and [B]")."""
    if order == "ABBA":
        template = template.replace("[B] and [A]", "[A] and [B]", 1)
    elif order != "BABA":
        raise ValueError(f"order must be ABBA or BABA, got {order!r}")
    return template.replace("[A]", io).replace("[B]", s).replace("[PLACE]", place).replace("[OBJECT]", obj)


def generate(
    n: int,
    seed: int = 0,
    names: list[str] | None = None,
    split: str = "all",
    orders: tuple[str, ...] = ("ABBA", "BABA"),
) -> list[IOIPrompt]:
    """`n` prompts, alternating orders, seeded.

    split: "train" uses only training templates and name pairs, "heldout" only held-out templates and pairs,
    "all" anything.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    names = list(names if names is not None else NAMES)
    if len(names) < 2:
        raise ValueError("IOI prompts need at least two distinct single-token names")
    if split == "train":
        templates = [i for i in range(len(BABA_TEMPLATES)) if i not in HELDOUT_TEMPLATES]
    elif split == "heldout":
        templates = list(HELDOUT_TEMPLATES)
    elif split == "all":
        templates = list(range(len(BABA_TEMPLATES)))
    else:
        raise ValueError(f"split must be train, heldout or all, got {split!r}")
    rng = random.Random(seed)
    out: list[IOIPrompt] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * (n + 10):
            raise ValueError(f"could not draw {n} {split} IOI prompts from {len(names)} names")
        io, s = rng.sample(names, 2)
        if split != "all" and is_heldout_pair(io, s) != (split == "heldout"):
            continue
        order = orders[len(out) % len(orders)]
        t = rng.choice(templates)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        full = fill(BABA_TEMPLATES[t], io, s, order, place, obj)
        text = full[: -(len(io) + 1)]  # drop " IO"
        out.append(IOIPrompt(text=text, io=io, s=s, order=order, template=t, place=place, obj=obj))
    return out


# ---- tokens: single-token names and the four positions the IOI circuit is read at -------------------------

from typing import Callable, Sequence  # noqa: E402  (kept beside the additions that use them)

Encode = Callable[[str], list[int]]


class NameTokenError(AttnscopeError, ValueError):
    """The tokenizer splits (almost) every name into several tokens, so IOI prompts cannot be built."""


def single_token_names(encode: Encode, names: Sequence[str] | None = None) -> list[str]:
    """Names that `encode` keeps as one token with a leading space (" Mary" -> one id)."""
    return [n for n in (names if names is not None else NAMES) if len(encode(" " + n)) == 1]


def require_single_token_names(encode: Encode, model_name: str, names: Sequence[str] | None = None, need: int = 2) -> list[str]:
    """`single_token_names`, or a one-line `NameTokenError` saying which names were split and how."""
    pool = list(names if names is not None else NAMES)
    ok = single_token_names(encode, pool)
    if len(ok) >= need:
        return ok
    split_examples = [n for n in pool if n not in ok][:3]
    shown = ", ".join(f"' {n}' -> {len(encode(' ' + n))} tokens" for n in split_examples)
    raise NameTokenError(
        f"the tokenizer of {model_name} keeps only {len(ok)} of {len(pool)} IOI names as single tokens "
        f"(needs {need}; e.g. {shown})"
    )


@dataclass(frozen=True)
class IOIPositions:
    """Token positions (BOS at 0) of the indirect object, the two subject mentions and the last prompt token."""

    io: int
    s1: int
    s2: int
    end: int


def name_token(encode: Encode, name: str) -> int:
    """The single id of `" " + name`; ValueError when the tokenizer splits it."""
    ids = encode(" " + name)
    if len(ids) != 1:
        raise NameTokenError(f"' {name}' is {len(ids)} tokens, not one")
    return ids[0]


def prompt_ids(encode: Encode, prompt: IOIPrompt, bos_id: int | None) -> list[int]:
    """`[BOS] + encode(prompt.text)`; just `encode(prompt.text)` when `bos_id` is None (models trained without BOS)."""
    return ([] if bos_id is None else [bos_id]) + list(encode(prompt.text))


def token_positions(ids: Sequence[int], io_id: int, s_id: int) -> IOIPositions:
    """Where IO (first mention), S1, S2 (first and second subject mentions) and END (last token) sit in `ids`."""
    ids = list(ids)
    s_at = [i for i, t in enumerate(ids) if t == s_id]
    io_at = [i for i, t in enumerate(ids) if t == io_id]
    if len(s_at) < 2 or not io_at:
        raise ValueError("prompt does not contain the subject twice and the indirect object once as single tokens")
    return IOIPositions(io=io_at[0], s1=s_at[0], s2=s_at[1], end=len(ids) - 1)


def prompt_positions(encode: Encode, prompt: IOIPrompt, bos_id: int | None) -> IOIPositions:
    return token_positions(prompt_ids(encode, prompt, bos_id), name_token(encode, prompt.io), name_token(encode, prompt.s))


# ---- corrupted variants -----------------------------------------------------------------------------------

# What each corruption changes; everything else in the token sequence stays as it was.
CORRUPTIONS: dict[str, str] = {
    "names": "IO and S replaced by two other names (ABB -> CDD); same tokens elsewhere, same positions",
    "abs_pos": "a sentence prepended: every position shifts, every distance between tokens stays",
    "rel_pos": "a clause inserted after the name pair: S2 and END move away from S1, IO and ' and'",
    "alongside": "' and' between the two first names replaced by ' alongside'",
    "names_abs": "names changed (CDD) and a sentence prepended: keeps only 'a name duplicating one beside and'",
    "combined": "the paper's kind of corruption in attnscope's text: names changed (CDD, C != D), a sentence "
    "prepended and a clause inserted after the name pair, so absolute and relative positions both move; keeps only "
    "'a name duplicating one beside and' (the paper's exact text and name draw: the paper setting)",
}
PAPER_CORRUPTIONS: tuple[str, ...] = ("combined", "alongside")  # the two the paper reports (~93% and ~43%)
PREFIX_SENTENCE = "It was a quiet morning in the town.\n"  # ends in a newline so the prompt's first word keeps its tokens
INSERTED_CLAUSE = ", who had been friends for years,"
PAIR_WORD = " and"
PAIR_WORD_ALT = " alongside"


def _pair_template(template: str, order: str, joiner: str, after_pair: str) -> str:
    first, second = ("[A]", "[B]") if order == "ABBA" else ("[B]", "[A]")
    old = "[B] and [A]"
    if old not in template:
        raise ValueError(f"template has no name pair: {template!r}")
    return template.replace(old, f"{first}{joiner} {second}{after_pair}", 1)


def _render(prompt: IOIPrompt, io: str, s: str, joiner: str = PAIR_WORD, after_pair: str = "", prefix: str = "") -> IOIPrompt:
    tmpl = _pair_template(BABA_TEMPLATES[prompt.template], prompt.order, joiner, after_pair)
    full = tmpl.replace("[A]", io).replace("[B]", s).replace("[PLACE]", prompt.place).replace("[OBJECT]", prompt.obj)
    text = prefix + full[: -(len(io) + 1)]
    return IOIPrompt(text=text, io=io, s=s, order=prompt.order, template=prompt.template, place=prompt.place, obj=prompt.obj)


def other_names(prompt: IOIPrompt, names: Sequence[str], rng: random.Random) -> tuple[str, str]:
    """Two distinct names from `names`, both different from the prompt's IO and S."""
    pool = [n for n in names if n not in (prompt.io, prompt.s)]
    if len(pool) < 2:
        raise NameTokenError(f"the names corruption needs at least 4 single-token names; {len(names)} available")
    c, d = rng.sample(pool, 2)
    return c, d


def corrupt(prompt: IOIPrompt, kind: str, names: Sequence[str] | None = None, seed: int = 0) -> IOIPrompt:
    """The prompt's corrupted variant `kind` (a key of `CORRUPTIONS`); `io`/`s` name the corrupted prompt's names.

    The new names of "names" and "names_abs" are drawn from `names` by a generator seeded with `seed` and the
    prompt's text, so a dataset's corruptions are reproducible.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    if kind in ("names", "names_abs", "combined"):
        rng = random.Random(zlib.crc32(f"{seed}|{prompt.text}".encode()))
        c, d = other_names(prompt, list(names if names is not None else NAMES), rng)
        if kind == "combined":
            return _render(prompt, c, d, after_pair=INSERTED_CLAUSE, prefix=PREFIX_SENTENCE)
        return _render(prompt, c, d, prefix=PREFIX_SENTENCE if kind == "names_abs" else "")
    if kind == "abs_pos":
        return _render(prompt, prompt.io, prompt.s, prefix=PREFIX_SENTENCE)
    if kind == "rel_pos":
        return _render(prompt, prompt.io, prompt.s, after_pair=INSERTED_CLAUSE)
    return _render(prompt, prompt.io, prompt.s, joiner=PAIR_WORD_ALT)


def third_name(prompt: IOIPrompt, names: Sequence[str], seed: int = 0) -> str:
    """A name other than the prompt's IO and S, drawn reproducibly (seeded by `seed` and the prompt's text)."""
    pool = [n for n in names if n not in (prompt.io, prompt.s)]
    if not pool:
        raise NameTokenError(f"the S2-only reference needs a third single-token name; {len(names)} available")
    return random.Random(zlib.crc32(f"s2|{seed}|{prompt.text}".encode())).choice(pool)


# ---- the paper's settings (ckkissane/attention-output-saes, ioi_dataset.py and ioi_circuit_analysis.py) -------

# The paper's ioi_dataset.py lists, verbatim: 109 names, 8 places, 8 objects.
PAPER_NAMES: list[str] = [
    "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Anderson", "Andre", "Andrew", "Andy", "Anna", "Anthony",
    "Arthur", "Austin", "Blake", "Brandon", "Brian", "Carter", "Charles", "Charlie", "Christian", "Christopher",
    "Clark", "Cole", "Collins", "Connor", "Crew", "Crystal", "Daniel", "David", "Dean", "Edward", "Elizabeth",
    "Emily", "Eric", "Eva", "Ford", "Frank", "George", "Georgia", "Graham", "Grant", "Henry", "Ian", "Jack",
    "Jacob", "Jake", "James", "Jamie", "Jane", "Jason", "Jay", "Jennifer", "Jeremy", "Jessica", "John", "Jonathan",
    "Jordan", "Joseph", "Joshua", "Justin", "Kate", "Kelly", "Kevin", "Kyle", "Laura", "Leon", "Lewis", "Lisa",
    "Louis", "Luke", "Madison", "Marco", "Marcus", "Maria", "Mark", "Martin", "Mary", "Matthew", "Max", "Michael",
    "Michelle", "Morgan", "Patrick", "Paul", "Peter", "Prince", "Rachel", "Richard", "River", "Robert", "Roman",
    "Rose", "Ruby", "Russell", "Ryan", "Sarah", "Scott", "Sean", "Simon", "Stephen", "Steven", "Sullivan", "Taylor",
    "Thomas", "Tyler", "Victoria", "Warren", "William",
]
PAPER_PLACES: list[str] = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
PAPER_OBJECTS: list[str] = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
PAPER_TEMPLATES_PER_ORDER = 7  # IOIDataset("mixed"): BABA_TEMPLATES[:15 // 2] + ABBA_TEMPLATES[:15 // 2]
PAPER_SEED = 1  # ioi_circuit_analysis.py: IOIDataset(prompt_type="mixed", N=100, prepend_bos=False, seed=1)
PAPER_PREFIX = "It was a nice day. "  # prepended as its own tokens (to_tokens(..., prepend_bos=False))
PAPER_FILLER = " while the weather was nice"  # inserted before the first clause's closing punctuation
PAPER_FLIP = "ABB->CDD, BAB->DCD"
PAPER_COMBINED = (
    f"the paper's corruption: names redrawn (ABB->CDD, BAB->DCD; C and D drawn independently, so C = D can happen), "
    f"{PAPER_PREFIX!r} prepended and {PAPER_FILLER!r} inserted before the first clause's closing punctuation"
)
SETTINGS = ("attnscope", "paper")


def generate_paper(n: int, seed: int = PAPER_SEED, names: Sequence[str] | None = None) -> list[IOIPrompt]:
    """The paper's `IOIDataset(prompt_type="mixed", N=n, seed=seed)` prompts, draw for draw.

    Its generator: `random.seed(seed)`; the 7 first BABA and 7 first ABBA templates, shuffled; per prompt a
    template, then three names until all differ (IO, S and an unused third), then a place and an object. Python's
    `random.Random(seed)` gives the same draws as the seeded module functions. `names` defaults to `PAPER_NAMES`
    (pass the ones the model keeps as single tokens).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    pool = list(names if names is not None else PAPER_NAMES)
    if len(pool) < 3:
        raise ValueError("the paper's IOI generator draws three distinct names; fewer than 3 are available")
    rng = random.Random(seed)
    k = PAPER_TEMPLATES_PER_ORDER
    templates = [(i, "BABA") for i in range(k)] + [(i, "ABBA") for i in range(k)]
    rng.shuffle(templates)
    out: list[IOIPrompt] = []
    for _ in range(n):
        t, order = rng.choice(templates)
        io = s = third = ""
        while len({io, s, third}) < 3:
            io, s, third = rng.choice(pool), rng.choice(pool), rng.choice(pool)
        place, obj = rng.choice(PAPER_PLACES), rng.choice(PAPER_OBJECTS)
        full = fill(BABA_TEMPLATES[t], io, s, order, place, obj)
        out.append(IOIPrompt(text=full[: -(len(io) + 1)], io=io, s=s, order=order, template=t, place=place, obj=obj))
    return out


def paper_flip_seed(seed: int) -> int:
    """`IOIDataset.gen_flipped_prompts`: the dataset seed plus the character codes of the flip string."""
    return seed + sum(map(ord, PAPER_FLIP))


def paper_new_names(prompts: Sequence[IOIPrompt], names: Sequence[str], seed: int) -> list[tuple[str, str]]:
    """C (the new IO) and D (the new S) per prompt, each drawn independently from the names other than the
    prompt's IO and S, as the paper's `gen_flipped_prompts` does (C = D is possible).

    The paper draws with `np.random.choice(list(set(names) - set(orig_names)))` for the letters of a set, so its
    exact names depend on Python's string hashing (PYTHONHASHSEED); attnscope draws from the sorted pool, C first,
    with `random.Random(paper_flip_seed(seed))`: the same distribution, reproducible."""
    rng = random.Random(paper_flip_seed(seed))
    out = []
    for p in prompts:
        pool = sorted(set(names) - {p.io, p.s})
        if not pool:
            raise NameTokenError(f"the paper's name corruption needs a third single-token name; {len(names)} available")
        out.append((rng.choice(pool), rng.choice(pool)))
    return out


def paper_punct_index(ids: Sequence[int], encode: Encode, text: str) -> int:
    """The paper's `get_word_idxs(prompts, [",", "."])`: for each of "," and "." present in the text, the position
    of its last token; "." wins when both are present (the clause before S2 ends there). `ids` without BOS."""
    idx = None
    for w in (",", "."):
        if w in text:
            tok = encode(w)
            if len(tok) != 1 or tok[0] not in ids:
                raise NameTokenError(f"the paper's filler position needs {w!r} as its own token in {text!r}")
            idx = len(ids) - 1 - list(ids)[::-1].index(tok[0])
    if idx is None:
        raise NameTokenError(f"the paper's filler position needs ',' or '.' in {text!r}")
    return idx


@dataclass(frozen=True)
class PaperCorrupted:
    """One prompt under the paper's combined corruption: its token ids and where IO, S1, S2, END moved to."""

    prompt: IOIPrompt  # the renamed prompt (C as io, D as s), without the prefix and filler
    ids: list[int]
    positions: IOIPositions


def paper_combined(prompt: IOIPrompt, c: str, d: str, encode: Encode, bos_id: int | None) -> PaperCorrupted:
    """The paper's combined corruption of one prompt, token for token: `[BOS] + prefix + renamed[:punct] + filler +
    renamed[punct:]` (the prefix and filler tokenised on their own, as `to_tokens(..., prepend_bos=False)` does).

    Names are single tokens, so IO and S1 move by the prefix, S2 and END by the prefix and the filler (the paper's
    `corr_offset`)."""
    renamed = _render(prompt, c, d)
    body = list(encode(renamed.text))
    clean_body = list(encode(prompt.text))
    pre, fill_ids = list(encode(PAPER_PREFIX)), list(encode(PAPER_FILLER))
    punct = paper_punct_index(clean_body, encode, prompt.text + " " + prompt.io)
    ids = ([] if bos_id is None else [bos_id]) + pre + body[:punct] + fill_ids + body[punct:]
    clean = token_positions(([] if bos_id is None else [bos_id]) + clean_body, name_token(encode, prompt.io),
                            name_token(encode, prompt.s))
    k, m = len(pre), len(fill_ids)
    if not clean.s1 < punct + (bos_id is not None) <= clean.s2:
        raise NameTokenError(f"the paper's filler position is not between S1 and S2 in {prompt.text!r}")
    pos = IOIPositions(io=clean.io + k, s1=clean.s1 + k, s2=clean.s2 + k + m, end=len(ids) - 1)
    return PaperCorrupted(renamed, ids, pos)


# The IOI runner's experiments (sae.experiments.ioi); listed here so the CLI can offer them without importing torch.
N_PROMPTS = 100  # prompts per IOI experiment (ABBA and BABA alternating): the CLI's default, as in the paper

EXPERIMENTS: dict[str, str] = {
    "clean": "logit difference IO - S and accuracy",
    "splice": "SAEs spliced into hook_z, with and without the error term",
    "heads": "zero- and mean-ablation of each head",
    "features": "zero-ablation of each live SAE feature at S2 only",
    "path": "a feature's W_dec W_O direction removed from later heads' value input at S2",
    "noising": "attention output at S2 patched from corrupted prompts",
}
