"""Where the embedded default model and its SAEs live inside the installed package."""

from __future__ import annotations

from pathlib import Path

from sae.engine.safe_io import protect

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_MODEL_DIR = DEFAULT_DIR / "model"
DEFAULT_SAES_DIR = DEFAULT_DIR / "saes"
MODEL_CARD = DEFAULT_DIR / "MODEL_CARD.md"
DEFAULT_NAME = "attnscope-default"

protect(DEFAULT_DIR)  # the shipped files are read-only to the program: `save_sae` and `eval --write` refuse them


def resolve_model(name: str) -> str:
    """Map the user's `--model` value to something `load_model` can open ("default" -> the shipped dir)."""
    return str(DEFAULT_MODEL_DIR) if name in ("default", DEFAULT_NAME) else name


def resolve_saes(spec: str) -> str:
    """Map the user's `--saes` value ("default" -> the shipped SAE dir)."""
    return str(DEFAULT_SAES_DIR) if spec in ("default", DEFAULT_NAME) else spec
