"""Data-parallel SAE training over `torch.distributed` (launched by `torchrun`), and the data shards it reads.

How a run is split (the same definitions hold for one process and for N):
- **Data shards.** The activation stream of a run is `data_shards` lanes: lane `l` reads the token rows
  `rows[l::data_shards]` (or the same rows of an activation cache) in its own seeded order, through its own model
  pass and its own shuffle buffer of `buffer_batches` lane-batches. A global batch of `batch_size` tokens is the
  concatenation, in lane order, of every lane's batch of `batch_size / data_shards`. `data_shards` is fixed when a
  run starts (default: its number of processes) and saved with it; each of `world_size` processes holds
  `data_shards / world_size` consecutive lanes. So a 2-process run equals a 1-process run with `data_shards=2` and
  the same global batch, and a run may resume on any number of processes dividing `data_shards`.
- **Gradients.** Each process computes the step's gradients on its local batch (hand-written backward or
  autograd); one all-reduce of the flattened gradients (with the firing counts and the loss appended) averages
  them, so every replica takes the same Adam step; decoder renormalisation then stays identical everywhere.
- **Dead-feature statistics** are summed across processes (the firing counts above); resampling samples inputs at
  global buffer positions drawn from a generator every replica holds in the same state, and the revived weights
  are broadcast from rank 0.
- **Files.** Only rank 0 writes `train_config.json`, the SAE directories and `checkpoint.pt`; every rank writes the
  state of its own lanes (`lanes/lane{l}-step{S}.pt`) first, and rank 0 writes the checkpoint that names them
  after a barrier, so a checkpoint is whole or absent even when a process dies (multi-node runs need `--out` on a
  filesystem every node sees); `sae.engine.training.checkpoint` writes and reads them.

`Sync` is what the trainer calls; `LocalSync` (one process) does nothing, `ProcessGroupSync` talks to the process
group. `gloo` serves CPU runs, `nccl` CUDA runs.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import re
import socket
from typing import Any, Callable

import torch

from sae.engine.activations import ActivationBuffer, Prefetcher
from sae.engine.errors import AttnscopeError


class DistributedError(AttnscopeError, ValueError):
    """A data-parallel run cannot start as set up (processes, batch, shards); one line for the user."""


class PeerLostError(DistributedError):
    """A collective failed because another process of the run is gone (killed, crashed, unreachable)."""


PEER_LOST = "lost contact with the other training processes"  # the start of PeerLostError's line
TIMEOUT_ENV = "ATTNSCOPE_DIST_TIMEOUT"  # seconds a collective may wait (a dead peer ends the run after this)


# ---- process groups -------------------------------------------------------------------------------------------


class Sync:
    """What the trainer asks of its process group. One process: every call is the identity (`LocalSync`)."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_step(self, params: list[torch.Tensor], fired: torch.Tensor, loss: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average the `.grad` of `params` over processes, sum `fired [d_sae]`, average `loss`; one all-reduce."""
        return fired, loss

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over processes (in place where possible)."""
        return t

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any."""
        return flag

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` with rank 0's values."""

    def barrier(self) -> None:
        pass


class LocalSync(Sync):
    """A single process."""


class ProcessGroupSync(Sync):
    """The default `torch.distributed` process group (initialised by `init_process_group`)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))

    def _talk(self, op: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run one collective; the backend's error when a peer is gone (gloo's "Connection reset by peer", a
        timeout, NCCL's abort) is the user's `PeerLostError`, not a traceback (the launcher then says which
        process died)."""
        try:
            return op(*args, **kw)
        except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
            raise PeerLostError(f"{PEER_LOST} (process {self.rank} of {self.world_size}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from exc

    def reduce_step(self, params, fired, loss):
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [fired.reshape(-1).float(), loss.detach().reshape(1).float()])
        self._talk(self.dist.all_reduce, flat)
        flat[: flat.numel() - fired.numel() - 1].div_(self.world_size)
        pos = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[pos : pos + n].view_as(g))
            pos += n
        fired_all = flat[pos : pos + fired.numel()].view_as(fired).to(fired.dtype)
        return fired_all, flat[-1] / self.world_size

    def all_sum(self, t):
        self._talk(self.dist.all_reduce, t)
        return t

    def any(self, flag):
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        self._talk(self.dist.all_reduce, t)
        return bool(t.item() > 0)

    def broadcast_(self, tensors):
        for t in tensors:
            self._talk(self.dist.broadcast, t.data, src=0)

    def barrier(self) -> None:
        self._talk(self.dist.barrier)

    def _device(self) -> torch.device:
        if self.dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or anything setting its environment: `RANK`, `WORLD_SIZE`,
    `MASTER_ADDR`); a one-process torchrun run also joins a (one-member) process group."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init_from_env(device: str = "auto") -> tuple[Sync, torch.device]:
    """Join the process group torchrun described in the environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
    `MASTER_ADDR`, `MASTER_PORT`): `nccl` and `cuda:LOCAL_RANK` on CUDA, `gloo` and the CPU otherwise. Without a
    torchrun environment: `LocalSync()` and the requested device."""
    if not launched_by_torchrun():
        if device == "auto":
            return LocalSync(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return LocalSync(), torch.device(device)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda was asked for but this machine has no CUDA device")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"process {local_rank} on this node has no GPU ({torch.cuda.device_count()} "
                                   "visible); start at most one process per GPU")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return ProcessGroupSync(), dev


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_launch(nproc: int, device: str) -> None:
    """One-line errors for process counts this machine cannot run (before anything is launched)."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1 (got {nproc})")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        n_gpu = torch.cuda.device_count()
        if nproc > n_gpu:
            raise DistributedError(f"--nproc {nproc} exceeds the {n_gpu} visible GPU(s); start one process per GPU")
    else:
        cores = os.cpu_count() or 1
        if nproc > cores:
            raise DistributedError(f"--nproc {nproc} exceeds the {cores} CPU cores of this machine")


def check_split(batch_size: int, data_shards: int, world_size: int) -> None:
    """The global batch splits into equal lane batches, and the lanes into equal sets per process."""
    if data_shards < 1:
        raise DistributedError(f"data_shards must be at least 1 (got {data_shards})")
    if data_shards % world_size:
        raise DistributedError(f"the run's {data_shards} data shard(s) do not divide among {world_size} processes; "
                               f"use a process count dividing {data_shards}")
    if batch_size % data_shards:
        raise DistributedError(f"batch_size {batch_size} is not divisible by {data_shards} data shards "
                               f"(one per process unless data_shards is given)")


def strip_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc N` / `--nproc=N` (what each launched process runs)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def launch_torchrun(nproc: int, device: str, program: list[str],
                    announce: Callable[[str], None] | None = None) -> int:
    """Run `python -m torch.distributed.run` with `nproc` processes on 127.0.0.1 and a free port, each running
    `python <program>` (e.g. `["-m", "workbench.main", "train", ...]` without --nproc); its exit status. On the CPU
    each process gets `cores / nproc` threads unless OMP_NUM_THREADS is set. `announce` hears the command line
    first. Check the setup first (`check_launch`, `check_split`)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *program]
    env = dict(os.environ)
    if not device.startswith("cuda"):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if announce is not None:
        announce(f"launching {nproc} processes: {' '.join(cmd[1:])}")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    said, noise = filter_torchrun_stderr(proc.stderr, sys.stderr)
    rc = proc.wait()
    if rc != 0:
        line = failure_line(said, noise, rc)
        if line is not None:  # a rank died without a message of ours: one line instead of torchrun's report
            raise DistributedError(line)
        for text in said:  # the ranks' own one-line errors, each once
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
    return rc


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
_OURS = ("attnscope: error:", "attnscope: bug:")


def filter_torchrun_stderr(lines: Any, sink: Any) -> tuple[list[str], str]:
    """Pass the ranks' own stderr lines (progress, warnings) to `sink`, hold back the launcher's and the ranks'
    tracebacks and logging (torch prefixes a rank's uncaught exception with `[rankN]:`), and collect the ranks'
    one-line errors (`attnscope: error: ...`, `attnscope: bug: ...`), each once and in order, for the launcher to
    print after the run; (those error lines, the text held back)."""
    held: list[str] = []
    said: list[str] = []
    in_traceback = False
    for raw in lines:
        prefixed = _RANK_PREFIX.match(raw)
        line = raw[prefixed.end():] if prefixed else raw
        if line.startswith(_OURS):
            in_traceback = False
            if line.rstrip("\n") not in said:
                said.append(line.rstrip("\n"))
            continue
        if prefixed or line.startswith("Traceback") or line.lstrip().startswith("torch.distributed.elastic") \
                or in_traceback:
            in_traceback = in_traceback or (not prefixed and line.startswith("Traceback"))
            held.append(raw)
            continue
        if re.match(r"^\s*(\[?[WEI]\d{4}|W\d|E\d|\*+|=+|-{5,}|\s+(rank|exitcode|error_file|time|host|"
                    r"local_rank|traceback)\s*:|\[\d+\]:|Root Cause|Failures:|\S*ChildFailedError)", line):
            held.append(raw)
            continue
        sink.write(raw)
    sink.flush()
    return said, "".join(held)


def root_cause(held: str) -> tuple[int, int] | None:
    """(rank, exit code) of torchrun's "Root Cause (first observed failure)" entry, else of its first failure
    entry; None when its report is not there."""
    at = held.find("Root Cause")
    for text in ((held[at:],) if at >= 0 else ()) + (held,):
        m = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", text, re.S)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def failure_line(said: list[str], held: str, rc: int) -> str | None:
    """The one line a failed run ends with, or None when the ranks' own error lines say it: a rank killed by a
    signal (the others then lose contact, and say so) is named by `rank_death_line`, as is a rank that died
    without a line of ours; otherwise the ranks' lines stand (without the peers' "lost contact" echo)."""
    cause = root_cause(held)
    killed = cause is not None and cause[1] < 0
    if killed or not said:
        return rank_death_line(held, rc)
    own = [x for x in said if PEER_LOST not in x]
    said[:] = own or said
    return None


def rank_death_line(held: str, rc: int) -> str:
    """One line from torchrun's failure report: which rank died (its root cause) and how, and that --resume
    continues."""
    import signal

    cause = root_cause(held)
    if cause is not None:
        rank, code = cause
        if code < 0:
            try:
                how = f"was killed ({signal.Signals(-code).name})"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        who = f"the process of rank {rank} {how}"
    else:
        who = f"a training process died (torchrun exit status {rc})"
    return (f"{who}; the other processes were stopped. The run keeps its last checkpoint: continue it with the "
            "same command and --resume")


# ---- data shards ----------------------------------------------------------------------------------------------

LANE_SEED = 1_000_033  # lane l reads its rows in an order seeded by seed + LANE_SEED * l
BUFFER_SEED = 7919  # and shuffles its buffer from seed + 1 + BUFFER_SEED * l (lane 0: the one-lane seeds)


def shard_source(source: Any, lane: int, n_lanes: int) -> Any:
    """The source reading lane `lane` of `n_lanes`: rows `lane::n_lanes` of `source` (a `ZSource` or a
    `CacheSource`, both keeping `rows`, `seed` and the epoch order), seeded for the lane. One lane: `source`."""
    if n_lanes == 1:
        return source
    if not all(hasattr(source, a) for a in ("rows", "seed", "_epoch_order")):
        raise DistributedError(f"a {type(source).__name__} cannot be split into data shards")
    s = copy.copy(source)
    s.rows = source.rows[lane::n_lanes]
    if s.rows.shape[0] == 0:
        raise DistributedError(f"the corpus has {source.rows.shape[0]} rows, fewer than its {n_lanes} data shards")
    s.rows_per_pass = max(1, min(source.rows_per_pass, s.rows.shape[0]))
    s.seed = source.seed + LANE_SEED * lane
    s.epoch, s.pos = 0, 0
    s._order = s._epoch_order(0)  # noqa: SLF001 - a lane is a ZSource re-seeded here, its order rebuilt
    return s


class ShardedBuffer:
    """The lanes this process holds, each a (source, `ActivationBuffer`) pair; looks like one buffer to the trainer.

    `next_batch()` is `[n_layers, batch_size / world_size, d_in]`: this process's lanes' batches in lane order.
    """

    def __init__(self, source: Any, n_layers: int, d_in: int, cfg: Any, device: torch.device, sync: Sync) -> None:
        self.n_lanes = int(cfg.data_shards)
        check_split(cfg.batch_size, self.n_lanes, sync.world_size)
        per = self.n_lanes // sync.world_size
        self.owned = list(range(sync.rank * per, (sync.rank + 1) * per))
        self.lane_batch = cfg.batch_size // self.n_lanes
        self.capacity = cfg.buffer_batches * self.lane_batch
        self.sources: dict[int, Any] = {}
        self.buffers: dict[int, ActivationBuffer] = {}
        for lane in self.owned:
            src = shard_source(source, lane, self.n_lanes)
            if getattr(cfg, "prefetch", 0):
                src = Prefetcher(src, cfg.prefetch)
            self.sources[lane] = src
            self.buffers[lane] = ActivationBuffer(
                src.next_chunk, n_layers, d_in, self.capacity, self.lane_batch, device,
                torch.Generator().manual_seed(cfg.seed + 1 + BUFFER_SEED * lane))
        self.sync = sync

    @property
    def storage(self) -> torch.Tensor:
        """`[n_layers, capacity x owned lanes, d_in]`: this process's buffered activations, lanes in order."""
        parts = [self.buffers[lane].storage for lane in self.owned]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @property
    def filled(self) -> bool:
        return all(b.filled for b in self.buffers.values())

    def fill(self) -> None:
        for b in self.buffers.values():
            if not b.filled:
                b.fill()

    def next_batch(self) -> torch.Tensor:
        parts = [self.buffers[lane].next_batch() for lane in self.owned]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def first_moments(self, slot: int) -> tuple[float, torch.Tensor, float]:
        """Over every lane's buffer (all processes): the mean norm of one layer's activations, their mean `[d_in]`
        and their mean squared norm, for the activation scale and the decoder-bias init."""
        if not self.filled:
            self.fill()
        acc = None
        for lane in self.owned:
            x = self.buffers[lane].storage[slot].double()
            part = torch.cat([x.norm(dim=-1).sum().reshape(1), x.pow(2).sum().reshape(1), x.sum(0),
                              x.new_tensor([x.shape[0]])])
            acc = part if acc is None else acc + part
        acc = self.sync.all_sum(acc)
        n = acc[-1]
        return float(acc[0] / n), (acc[2:-1] / n).float(), float(acc[1] / n)

    def sample(self, n: int, slot: int, generator: torch.Generator) -> torch.Tensor:
        """`[n, d_in]` activations of one layer at `n` global buffer positions drawn from `generator` (lane-major:
        position p is slot p % capacity of lane p // capacity). Every process draws the same positions from its
        copy of the generator, fills those in its lanes, and the sum over processes completes the sample. One
        lane: exactly `ActivationBuffer.sample`."""
        if not self.filled:
            self.fill()
        pos = torch.randperm(self.capacity * self.n_lanes, generator=generator)[:n]
        first = self.buffers[self.owned[0]]
        out = torch.zeros(pos.numel(), first.storage.shape[-1], device=first.storage.device)
        lane_of, slot_of = pos // self.capacity, pos % self.capacity
        for lane in self.owned:
            mine = (lane_of == lane).nonzero().flatten()
            if mine.numel():
                rows = self.buffers[lane].storage[slot].index_select(0, slot_of[mine].to(out.device))
                out.index_copy_(0, mine.to(out.device), rows)
        if len(self.owned) < self.n_lanes:
            out = self.sync.all_sum(out)
        return out

    def close(self) -> None:
        """Stop the prefetching threads (if any); the sources' states stay where they are."""
        for src in self.sources.values():
            if isinstance(src, Prefetcher):
                src.close()

    def lane_states(self) -> dict[int, dict[str, Any]]:
        return {lane: {"buffer": self.buffers[lane].state_dict(), "source": self.sources[lane].state_dict()}
                for lane in self.owned}

    def load_lane_states(self, states: dict[int, dict[str, Any]]) -> None:
        for lane in self.owned:
            self.buffers[lane].load_state_dict(states[lane]["buffer"])
            self.sources[lane].load_state_dict(states[lane]["source"])


# ---- communication estimate -----------------------------------------------------------------------------------


def comm_estimate(d_in: int, d_sae: int, batch_per_proc: int, n_proc: int, link_gb_s: float, step_tflops: float,
                  bytes_per_value: int = 4) -> dict[str, float]:
    """Per step of a dense SAE: the ring all-reduce time of its fp32 gradients (`2 d_in d_sae + d_sae + d_in`
    values, each process sending and receiving `2 (N-1)/N` of the bytes) at `link_gb_s` GB/s, against the compute
    time of one process's dense step, five `[B, d_in] x [d_in, d_sae]`-sized matmuls (encode, decode, the two
    weight gradients and the gradient through the decoder) = `10 batch_per_proc d_in d_sae` FLOPs, at `step_tflops`
    TFLOP/s (the convention of `bench train`'s "dense-equivalent" FLOP/s). Returns the gradient size,
    both times, the comm/compute ratio and the efficiency without overlap: compute / (compute + comm)."""
    values = 2 * d_in * d_sae + d_sae + d_in
    moved = values * bytes_per_value * 2 * (n_proc - 1) / n_proc
    comm = moved / (link_gb_s * 1e9)
    compute = 10 * batch_per_proc * d_in * d_sae / (step_tflops * 1e12)
    return {"grad_mb": values * bytes_per_value / 1e6, "comm_s": comm, "compute_s": compute,
            "ratio": comm / compute if compute else math.inf,
            "efficiency_no_overlap": compute / (compute + comm) if compute + comm else 0.0}
