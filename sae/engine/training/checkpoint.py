"""A training run's files: `train_config.json`, `checkpoint.pt` and the data lanes' state files.

- `write_text` writes a text file atomically (its directory made first): the config beside the outputs.
- `save_checkpoint` / `load_checkpoint`: one torch file, whole or absent, read with weights only.
- `write_checkpoint` / `read_lane_states`: the checkpoint of a (possibly data-parallel) run. One process keeps its
  data lanes inside `checkpoint.pt` (`"data"`); several write one file per lane (`lanes/lane{l}-step{S}.pt`) and
  rank 0 then writes the checkpoint naming them (`"data_files"`), so it is whole or absent even when a process dies
  (`sae.engine.training.distributed` explains lanes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from sae.engine.errors import TrainingError
from sae.engine.safe_io import atomic_write_text, atomic_write_with, safe_torch_load, save_torch
from sae.engine.training.distributed import Sync

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "train_config.json"
CHECKPOINT_FORMAT = "attnscope-train-checkpoint-2"
LANES_DIR = "lanes"


def write_text(path: Path, text: str) -> None:
    """`text` written to `path` atomically, its directory created first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, follow_symlink=False)  # a name the program chose: never through a link


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temporary file renamed into place: a checkpoint is either whole or absent; a full
    disk is a one-line OutputError with the previous checkpoint untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: save_torch(state, tmp), follow_symlink=False)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's tensors and plain values (weights only: nothing in it is executed; a file that would run
    code, or a truncated one, is `safe_io.UnsafeFileError`)."""
    try:
        state = safe_torch_load(path, "checkpoint")
    except FileNotFoundError as exc:
        raise TrainingError(f"no checkpoint to resume from at {path}") from exc
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path} does not hold a training state")
    return state


def lane_file(lane: int, step: int) -> str:
    """A lane's state file at `step`, relative to the run's directory."""
    return f"{LANES_DIR}/lane{lane}-step{step}.pt"


def write_checkpoint(path: Path, state: dict[str, Any], lanes: dict[int, dict[str, Any]], step: int,
                     sync: Sync) -> None:
    """One process: `state` with its lanes inside (`"data"`). Several: every process writes its lanes' files,
    then (barrier) rank 0 writes `state` naming them (`"data_files"`) and removes older lane files."""
    if sync.world_size == 1:
        save_checkpoint(path, {**state, "data": lanes})
        for f in (path.parent / LANES_DIR).glob("lane*-step*.pt"):  # left by an earlier multi-process session
            f.unlink(missing_ok=True)
        return
    for lane, s in lanes.items():
        save_checkpoint(path.parent / lane_file(lane, step), s)
    sync.barrier()
    if sync.is_main:
        n_lanes = len(lanes) * sync.world_size
        save_checkpoint(path, {**state, "data_files": {lane: lane_file(lane, step) for lane in range(n_lanes)}})
        keep = {lane_file(lane, step).split("/")[-1] for lane in range(n_lanes)}
        for f in (path.parent / LANES_DIR).glob("lane*-step*.pt"):
            try:
                if f.name not in keep and int(f.stem.rsplit("step", 1)[1]) < step:
                    f.unlink()
            except (ValueError, OSError):
                pass


def read_lane_states(path: Path, state: dict[str, Any], lanes: list[int]) -> dict[int, dict[str, Any]]:
    """The saved states of `lanes` from a checkpoint `state` read at `path` (inside it or in its lane files)."""
    if "buffer" in state and "source" in state:  # a one-process checkpoint written before data shards
        data = {0: {"buffer": state["buffer"], "source": state["source"]}}
        return {lane: data[lane] for lane in lanes}
    if "data" in state:
        data = {int(k): v for k, v in state["data"].items()}
        return {lane: data[lane] for lane in lanes}
    files = {int(k): v for k, v in state.get("data_files", {}).items()}
    missing = [lane for lane in lanes if lane not in files]
    if missing:
        raise TrainingError(f"{path} holds no state for data shard {missing[0]}")
    return {lane: load_checkpoint(path.parent / files[lane]) for lane in lanes}
