"""What the workbench remembers across launches: the prompt and its history, the training form, and the last
result of each experiment. One JSON file in the data dir (`session.json` beside findings.json), written atomically
through `sae.engine.safe_io` (the names `workbench.findings` imports) under a lock, each change merged into what is on disk (two open workbenches keep
each other's entries). A damaged file is ignored (the workbench starts fresh) and replaced at the next change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.findings import DirLock, LockedError, OutputError, data_dir
from workbench.findings import safe_write_text as atomic_write_text  # sae.engine.safe_io's, via findings

FILE_NAME = "session.json"
HISTORY = 50  # prompts kept


class Session:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else data_dir()
        self.path = self.directory / FILE_NAME

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _change(self, key: str, fn: Any) -> bool:
        """Apply `fn(old value) -> new value` to one key; False when the file could not be written (the
        workbench keeps working, it only forgets)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = DirLock(self.directory, what="session", lock_path=self.path.with_name(FILE_NAME + ".lock"))
            lock.acquire(timeout=2.0)
            try:
                data = self.load()
                data[key] = fn(data.get(key))
                atomic_write_text(self.path, json.dumps(data, indent=1))
            finally:
                lock.release()
            return True
        except (OSError, OutputError, LockedError, TypeError, ValueError):  # TypeError: not JSON-able
            return False

    # ---- prompts -----------------------------------------------------------------------------------------

    def prompts(self) -> list[str]:
        p = self.load().get("prompts")
        return [x for x in p if isinstance(x, str)] if isinstance(p, list) else []

    def add_prompt(self, prompt: str) -> None:
        if not prompt.strip():
            return

        def add(old: Any) -> list[str]:
            past = [x for x in (old if isinstance(old, list) else []) if isinstance(x, str) and x != prompt]
            return (past + [prompt])[-HISTORY:]

        self._change("prompts", add)

    def last_prompt(self) -> str:
        past = self.prompts()
        return past[-1] if past else ""

    # ---- forms and results -------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        return self.load().get(key)

    def put(self, key: str, value: Any) -> bool:
        """Remember a JSON-able value (the training form, an experiment's last result)."""
        return self._change(key, lambda _old: value)
