"""The paper's fuzzy token match (long_prefix_induction.py / induction_feature_deep_dive.py): two tokens match when
they are equal up to a leading space or case. Used by the real-text induction study and the induction proxy."""

from __future__ import annotations

from typing import Callable


class FuzzyMatch:
    """The paper's `check_fuzzy_match(tok1, tok2)`: `tok1` equals `tok2` or one of its variants that is a single
    token: with a leading space added, with its leading space removed, `str.capitalize()`d, `str.lower()`ed.

    decode: token id -> its text; encode: text -> ids (a variant counts only when it is one token)."""

    def __init__(self, decode: Callable[[int], str], encode: Callable[[str], list[int]]) -> None:
        self.decode, self.encode = decode, encode
        self._cache: dict[int, frozenset[int]] = {}

    def _single(self, text: str, fallback: int) -> int:
        ids = self.encode(text) if text else []
        return ids[0] if len(ids) == 1 else fallback

    def variants(self, tok: int) -> frozenset[int]:
        if tok not in self._cache:
            t = self.decode(tok)
            out = {tok, self._single(" " + t, tok), self._single(t.capitalize(), tok), self._single(t.lower(), tok)}
            if t.startswith(" "):
                out.add(self._single(t[1:], tok))
            self._cache[tok] = frozenset(out)
        return self._cache[tok]

    def __call__(self, tok1: int, tok2: int) -> bool:
        return tok1 in self.variants(tok2)
