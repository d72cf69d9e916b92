"""The embedded corpus: text that exists offline wherever Python is installed, plus a little generated text.

Real text (most of it, written by others): the Python standard library's modules (code, comments and
docstrings; test suites left out) and the English `pydoc` topic pages. Generated text: IOI sentences from Wang
et al.'s templates (`sae.experiments.ioi_data`) and documents whose span is repeated later, so that induction has something to do.

Every document is assigned to "train" or "heldout" by a fixed hash of its name, so the split is stable across runs
and machines with the same Python version.
"""

from __future__ import annotations

import random
import sysconfig
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sae.experiments import ioi_data

SPLITS = ("train", "heldout")
_SKIP_DIRS = {"test", "tests", "idle_test", "lib2to3", "site-packages", "__pycache__", "turtledemo"}
IOI_SENTENCES_PER_DOC = 8


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    source: str  # "stdlib", "pydoc", "ioi", "repeat"


def _split_of(name: str, heldout_every: int = 20) -> str:
    return "heldout" if zlib.crc32(name.encode()) % heldout_every == 0 else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def _real_documents() -> tuple[Document, ...]:
    root = stdlib_root()
    docs: list[Document] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(name=f"stdlib/{rel.as_posix()}", text=text, source="stdlib"))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    for key in sorted(topics):
        docs.append(Document(name=f"pydoc/{key}", text=topics[key], source="pydoc"))
    return tuple(docs)


def ioi_documents(split: str, n_docs: int, seed: int) -> list[Document]:
    """IOI sentences, `IOI_SENTENCES_PER_DOC` per document, one per line, answers included."""
    prompts = ioi_data.generate(n_docs * IOI_SENTENCES_PER_DOC, seed=seed, split=split)
    docs = []
    for i in range(n_docs):
        chunk = prompts[i * IOI_SENTENCES_PER_DOC : (i + 1) * IOI_SENTENCES_PER_DOC]
        docs.append(Document(name=f"ioi/{split}/{i}", text="\n".join(p.full_text + "." for p in chunk), source="ioi"))
    return docs


def repeated_span_documents(base: list[Document], n_docs: int, seed: int) -> list[Document]:
    """Documents made of a stretch of real text, some other text, then the first stretch again."""
    rng = random.Random(seed)
    docs = []
    pool = [d for d in base if len(d.text) > 2000]
    for i in range(n_docs):
        d = rng.choice(pool)
        start = rng.randrange(0, len(d.text) - 1500)
        span = d.text[start : start + rng.randint(80, 300)]
        gap_start = rng.randrange(0, len(d.text) - 1200)
        gap = d.text[gap_start : gap_start + rng.randint(20, 600)]
        docs.append(Document(name=f"repeat/{i}", text=span + gap + span, source="repeat"))
    return docs


def document_records(split: str, synthetic: bool = True) -> list[Document]:
    """All documents of a split with their sources. Synthetic documents are about 8% of the characters."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
    real = [d for d in _real_documents() if _split_of(d.name) == split]
    if not synthetic:
        return real
    n_chars = sum(len(d.text) for d in real)
    # an IOI document is ~8 x 80 characters; aim for ~5% of characters from IOI, ~3% from repeats
    n_ioi = max(10, int(0.05 * n_chars / 650))
    n_rep = max(10, int(0.03 * n_chars / 1000))
    seed = 0 if split == "train" else 1
    docs = real + ioi_documents(split, n_ioi, seed) + repeated_span_documents(real, n_rep, seed)
    random.Random(seed).shuffle(docs)
    return docs


def documents(split: str = "train", synthetic: bool = True) -> list[str]:
    """The texts of a split (see `document_records`)."""
    return [d.text for d in document_records(split, synthetic)]
