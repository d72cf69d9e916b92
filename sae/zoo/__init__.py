"""The embedded default: its model, SAEs and corpus shipped in `default/`, the builder that made them, and the
doors that resolve the name "default" to them (the engine below knows no default).

May import `sae.engine`, `sae.analysis` and `sae.experiments`; never `sae.cli` or `workbench`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sae.engine.autoencoder import SAE
    from sae.engine.models import LoadedModel
    from sae.engine.zpass import ZModel

from sae.engine.safe_io import protect

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_MODEL_DIR = DEFAULT_DIR / "model"
DEFAULT_SAES_DIR = DEFAULT_DIR / "saes"
MODEL_CARD = DEFAULT_DIR / "MODEL_CARD.md"
DEFAULT_NAME = "attnscope-default"

protect(DEFAULT_DIR)  # the shipped files are read-only to the program: `save_sae` and `eval --write` refuse them
protect(Path(__file__).resolve().parents[1])  # and nothing is ever written inside the installed package


def is_default(name: str | Path) -> bool:
    return str(name) in ("default", DEFAULT_NAME)


def resolve_model(name: str) -> str:
    """Map the user's `--model` value to something `load_model` can open ("default" -> the shipped dir)."""
    return str(DEFAULT_MODEL_DIR) if is_default(name) else name


def resolve_saes(spec: str | Path) -> str:
    """Map the user's `--saes` value ("default" -> the shipped SAE dir)."""
    return str(DEFAULT_SAES_DIR) if is_default(spec) else str(spec)


def load_model(name: str = "default", device: str = "auto", dtype: str = "float32",
               backend: str | None = None) -> "LoadedModel":
    """`sae.engine.models.load_model` with "default" meaning the embedded model (named `attnscope-default`);
    `backend` as there (default: `ATTNSCOPE_BACKEND`, else the bridge-free GPT-2 where it applies)."""
    from sae.engine.models import ModelLoadError
    from sae.engine.models import load_model as load

    if is_default(name) or Path(name).expanduser().resolve() == DEFAULT_MODEL_DIR.resolve():
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError("the embedded default model is missing; rebuild it with `attnscope zoo train-default`")
        return load(str(DEFAULT_MODEL_DIR), device=device, dtype=dtype, display_name=DEFAULT_NAME, backend=backend)
    return load(name, device=device, dtype=dtype, backend=backend)


def load_training_model(name: str = "default", device: str = "auto") -> "LoadedModel | ZModel":
    """The model `attnscope train` reads z from: for a local plain GPT-2 directory (the embedded default included)
    a bridge-free `sae.engine.zpass.ZModel` (no transformers or TransformerLens import, the same z bit for bit);
    for anything else `load_model`'s bridge. float32."""
    import torch

    from sae.engine.models import resolve_device
    from sae.engine.zpass import load_gpt2_z_model

    default = is_default(name) or Path(name).expanduser().resolve() == DEFAULT_MODEL_DIR.resolve()
    path = DEFAULT_MODEL_DIR if default else Path(name).expanduser()
    if path.is_dir():
        zm = load_gpt2_z_model(path.resolve(), resolve_device(device), torch.float32, DEFAULT_NAME if default else name)
        if zm is not None:
            return zm
    return load_model(name, device=device)


def load_sae_set(spec: str | Path, model: "LoadedModel | None" = None, device: "str | torch.device" = "cpu",
                 dtype: "torch.dtype | None" = None) -> "dict[int, SAE]":
    """`sae.engine.formats.load_sae_set` with "default" meaning the embedded SAEs."""
    from sae.engine.formats import SAEFormatError
    from sae.engine.formats import load_sae_set as load

    if is_default(spec) and not DEFAULT_SAES_DIR.is_dir():
        raise SAEFormatError("the embedded default SAEs are missing from this install")
    return load(resolve_saes(spec), model, device=device, dtype=dtype)


def corpus_texts(spec: str | Path, split: str = "train", synthetic: bool = True) -> list[str]:
    """Documents of a corpus: "default" (the embedded corpus's `split`, "train" or "heldout") or a file or
    directory on disk (`sae.engine.activations.read_corpus`; `split` does not apply)."""
    from sae.engine.activations import CorpusError, read_corpus

    if not is_default(spec):
        if not Path(spec).expanduser().exists():
            raise CorpusError(f"corpus {str(spec)!r} is neither 'default' nor an existing file or directory")
        return read_corpus(spec)
    from sae.zoo import corpus

    docs = list(corpus.documents(split, synthetic=synthetic))
    if not docs:
        raise CorpusError(f"the embedded corpus has no {split!r} documents")
    return docs
