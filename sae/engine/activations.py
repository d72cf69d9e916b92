"""Turning text into token rows and token rows into hook_z activations."""

from __future__ import annotations

import collections
import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterable

import torch
from sae.engine.errors import AttnscopeError


def pack_tokens(
    docs: Iterable[str],
    encode: Callable[[str], list[int]],
    context_size: int,
    bos_id: int,
    eos_id: int | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """Tokenise `docs` and pack them into rows `[rows, context_size]` with BOS at position 0 of every row.

    Documents are concatenated (separated by `eos_id` when given) and cut into chunks of `context_size - 1`
    tokens; a trailing partial chunk is dropped.
    """
    if context_size < 2:
        raise ValueError(f"context size must be at least 2, got {context_size}")
    body = context_size - 1
    stream: list[int] = []
    rows: list[list[int]] = []
    for doc in docs:
        stream.extend(encode(doc))
        if eos_id is not None:
            stream.append(eos_id)
        while len(stream) >= body:
            rows.append([bos_id] + stream[:body])
            del stream[:body]
            if max_rows is not None and len(rows) >= max_rows:
                return torch.tensor(rows, dtype=torch.long)
    if not rows:
        return torch.empty(0, context_size, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


# ---- corpora ----------------------------------------------------------------------------------------------

CORPUS_SUFFIXES = (".txt", ".py", ".md")


class CorpusError(AttnscopeError):
    """A corpus could not be read or is too small; the message is one line meant for the user."""


def read_corpus(spec: str | Path) -> list[str]:
    """Documents of a corpus on disk: a .txt/.py/.md file (one document), or a directory searched recursively for
    such files (sorted, one document each). (The embedded corpus, "default", is `sae.zoo.corpus_texts`.)"""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise CorpusError(f"{path} holds no {'/'.join(CORPUS_SUFFIXES)} files")
    else:
        raise CorpusError(f"corpus {str(spec)!r} is not an existing file or directory")
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise CorpusError(f"could not read {f}: {exc.strerror or exc}") from exc
    return docs


def corpus_token_rows(
    model, texts: str | Path | Iterable[str], context_size: int, max_rows: int | None = None
) -> torch.Tensor:
    """Pack a corpus (a path for `read_corpus`, or the documents themselves) into `[rows, context_size]` token ids
    for `model` (BOS at position 0)."""
    if context_size > model.n_ctx:
        raise CorpusError(f"context size {context_size} exceeds the model's context ({model.n_ctx})")
    spec = texts if isinstance(texts, (str, Path)) else "the given texts"
    docs = read_corpus(texts) if isinstance(texts, (str, Path)) else list(texts)
    eos = getattr(model.tokenizer, "eos_token_id", None)
    rows = pack_tokens(docs, model.encode, context_size, model.bos_token_id, eos_id=eos, max_rows=max_rows)
    if rows.shape[0] == 0:
        raise CorpusError(f"corpus {str(spec)!r} is shorter than one row of {context_size} tokens")
    return rows


def rows_digest(rows: torch.Tensor) -> str:
    """A short fingerprint of token rows, stored in checkpoints so a resumed run notices a changed corpus."""
    return hashlib.sha256(rows.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


# ---- activations from the model -----------------------------------------------------------------------------


class StopForward(Exception):
    """Raised from the last hook a caller needs, so the rest of the forward pass is never computed."""


class ZSource:
    """Runs the model over packed token rows and returns hook_z of several layers from one forward pass.

    Each call to `next_chunk()` takes the next `rows_per_pass` rows (in an order reshuffled every epoch from
    `seed`), runs the model once and returns `[n_layers, rows_per_pass * (context - 1), d_in]` float32 on
    `device`, layers in `self.layers` order. z follows attnscope's convention (HookedTransformer's processed
    hook_z, see `sae.engine.models`). The BOS position of every row is left out (`skip_bos`, the default): its z
    is the same vector in every row, so it teaches an SAE nothing and inflates explained variance; evaluation and
    dashboards leave it out by the same rule. The pass is cut right after the last needed layer's hook_z, so that
    layer's output projection, MLP and everything above are never computed.

    On a GPT-2-architecture model the pass is `sae.engine.zpass.LeanZPass` (the bridge's operations without its
    modules and hook points): the first chunk is computed both ways and the lean pass is kept only when its z is
    bit-identical to the bridge's hook_z (`lean=False` always uses the bridge; `self.lean_used` says which ran).
    `model` may also be a bridge-free `sae.engine.zpass.ZModel`, which has only the lean pass (with fused kernels
    unless it was loaded `exact`: the bridge's z to float rounding, see `sae.engine.zpass`).
    """

    def __init__(
        self,
        model,
        token_rows: torch.Tensor,
        layers: list[int],
        rows_per_pass: int = 32,
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
        skip_bos: bool = True,
        lean: bool = True,
    ) -> None:
        if token_rows.dim() != 2 or token_rows.shape[0] == 0:
            raise CorpusError("no token rows to read activations from")
        self.skip_bos = skip_bos
        for layer in layers:
            model.check_layer(layer)
        self.model = model
        self.rows = token_rows
        self.layers = list(layers)
        self.rows_per_pass = max(1, min(rows_per_pass, token_rows.shape[0]))
        self.seed = seed
        self.autocast_dtype = autocast_dtype
        self.epoch = 0
        self.pos = 0
        self._order = self._epoch_order(0)
        # value biases flattened head-major, once: [n_layers, d_in]
        self._b_v = torch.stack([model.z_offset(layer).reshape(-1).float() for layer in self.layers])
        from sae.engine.zpass import lean_z_pass

        self._lean = lean_z_pass(model) if lean else None
        # a bridge-free model (`sae.engine.zpass.ZModel`) has only the lean pass, which tests/engine/test_zpass.py holds to
        # the bridge's bits; with a bridge the first chunk is checked here
        self._lean_checked = getattr(model, "bridge", None) is None

    @property
    def context_size(self) -> int:
        return int(self.rows.shape[1])

    @property
    def tokens_per_chunk(self) -> int:
        """Activations per `next_chunk()`: every position of every row, less the BOS positions when skipped."""
        return self.rows_per_pass * (self.context_size - int(self.skip_bos))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.rows.shape[0], generator=g)

    def _next_rows(self) -> torch.Tensor:
        picked: list[torch.Tensor] = []
        need = self.rows_per_pass
        while need:
            take = self._order[self.pos : self.pos + need]
            picked.append(take)
            need -= take.numel()
            self.pos += take.numel()
            if self.pos >= self._order.numel():
                self.epoch += 1
                self.pos = 0
                self._order = self._epoch_order(self.epoch)
        return self.rows[torch.cat(picked)]

    @property
    def lean_used(self) -> bool:
        """Whether chunks come from the lean pass (known after the first chunk)."""
        return self._lean is not None and self._lean_checked

    def _pass(self, tokens: torch.Tensor, lean: bool) -> torch.Tensor:
        """`[n_layers, batch * pos, d_in]` float32 z (value bias removed) of `tokens [batch, pos]`, from the lean
        pass or the bridge (cut right after the last needed hook_z)."""
        n_tok = tokens.numel()
        out = torch.empty(len(self.layers), n_tok, self.model.d_z, device=self.model.device)
        b_v = self._b_v.to(out.device)
        slot = {layer: i for i, layer in enumerate(self.layers)}
        last = max(self.layers)
        done: set[int] = set()

        def put(layer: int, z: torch.Tensor) -> None:
            i = slot[layer]
            # one fused write: flatten heads, remove the value bias, cast to float32
            torch.sub(z.reshape(n_tok, -1), b_v[i], out=out[i])
            done.add(layer)

        def grab(z: torch.Tensor, hook) -> torch.Tensor:
            from sae.engine.models import layer_of_hook

            layer = layer_of_hook(hook.name)
            put(layer, z)
            if layer == last:
                raise StopForward
            return z

        from sae.engine.models import z_hook_name

        dev_type = self.model.device.type
        with torch.no_grad(), torch.autocast(
            dev_type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            if lean:
                self._lean(tokens, sorted(self.layers), put)
            else:
                hooks = [(z_hook_name(layer), grab) for layer in self.layers]
                try:
                    self.model.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
                except StopForward:
                    pass
        if len(done) != len(self.layers):
            raise RuntimeError(f"hook_z was not reached for layers {sorted(set(self.layers) - done)}")
        return out

    def next_chunk(self) -> torch.Tensor:
        """`[n_layers, rows_per_pass * context, d_in]` float32 activations of the next rows."""
        tokens = self._next_rows().to(self.model.device)
        if self._lean is not None and self._lean_checked:
            out = self._pass(tokens, lean=True)
        else:
            out = self._pass(tokens, lean=False)
            if self._lean is not None:  # the first chunk: keep the lean pass only if it gives the same bits
                if torch.equal(self._pass(tokens, lean=True), out):
                    self._lean_checked = True
                else:
                    self._lean = None
        if self.skip_bos:
            rows, ctx = tokens.shape
            return out.view(len(self.layers), rows, ctx, -1)[:, :, 1:].reshape(len(self.layers), rows * (ctx - 1), -1)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._order = self._epoch_order(self.epoch)


class Prefetcher:
    """Makes a source's chunks ahead of time on a background thread, so the model's forward pass (mostly Python
    overhead on a small model, which releases nothing to the SAE step's matmuls) overlaps the SAE steps.

    Chunks come out in exactly the order `source.next_chunk()` makes them, so training is unchanged; `state_dict()`
    is the source's state before the first chunk not yet handed out, so a checkpoint resumes exactly as without
    prefetching. At most `depth` chunks wait; an error in the worker is raised by the `next_chunk()` that wanted
    its chunk. `close()` stops the worker (it is a daemon thread, so a dying process never waits for it).
    """

    def __init__(self, source, depth: int, threads: int | None = None) -> None:
        self.source = source
        self.depth = max(1, int(depth))
        self.threads = threads
        self._queue: collections.deque = collections.deque()  # (source state before the chunk, chunk)
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __getattr__(self, name: str):  # layers, d_in, tokens_per_chunk, ... of the wrapped source
        if name == "source":  # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    def _work(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while len(self._queue) >= self.depth and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self._busy = True
            try:
                state = self.source.state_dict()
                chunk = self.source.next_chunk()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                with self._cond:
                    self._error, self._busy = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._queue.append((state, chunk))
                self._busy = False
                self._cond.notify_all()

    def _ensure_started(self) -> None:
        if self._thread is None and self._error is None:
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="attnscope-prefetch", daemon=True)
            self._thread.start()

    def next_chunk(self) -> torch.Tensor:
        self._ensure_started()
        with self._cond:
            while not self._queue and self._error is None:
                self._cond.wait()
            if not self._queue:
                raise self._error  # type: ignore[misc]
            _, chunk = self._queue.popleft()
            self._cond.notify_all()
        return chunk

    def state_dict(self) -> dict:
        with self._cond:
            while self._busy:
                self._cond.wait()
            return dict(self._queue[0][0]) if self._queue else self.source.state_dict()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self._queue.clear()

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self._error = None
        self.source.load_state_dict(state)


class ActivationBuffer:
    """A shuffling buffer of activations for several layers at once, `[n_layers, capacity, d_in]` on device.

    Batches are drawn in a random order; once half of the buffer has been consumed, exactly the consumed
    slots are overwritten with fresh activations and the whole buffer is reshuffled (the paper's "refill half
    when half is consumed"), so consecutive SAE batches mix tokens from many model passes. All layers share
    the slot order: a batch holds the same tokens for every layer.
    """

    def __init__(
        self,
        produce: Callable[[], torch.Tensor],
        n_layers: int,
        d_in: int,
        capacity: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if capacity < 2 * batch_size:
            raise ValueError(f"buffer capacity {capacity} must hold at least two batches of {batch_size}")
        self.produce = produce
        self.capacity = capacity
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = generator or torch.Generator()
        self.storage = torch.empty(n_layers, capacity, d_in, device=self.device)
        self.perm = torch.empty(0, dtype=torch.long)
        self.ptr = 0
        self.filled = False
        self.pending = torch.empty(n_layers, 0, d_in, device=self.device)  # produced but not yet stored
        self.refills = 0

    def _take(self, n: int) -> torch.Tensor:
        parts = [self.pending]
        have = self.pending.shape[1]
        while have < n:
            chunk = self.produce().to(self.device)
            parts.append(chunk)
            have += chunk.shape[1]
        allv = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        self.pending = allv[:, n:].clone()
        return allv[:, :n]

    def _shuffle(self) -> None:
        self.perm = torch.randperm(self.capacity, generator=self.generator)
        self.ptr = 0

    def fill(self) -> None:
        """First fill: the whole buffer."""
        self.storage.copy_(self._take(self.capacity))
        self.filled = True
        self._shuffle()

    def refill(self) -> None:
        """Overwrite the consumed slots with fresh activations, then reshuffle everything."""
        used = self.perm[: self.ptr].to(self.device)
        self.storage.index_copy_(1, used, self._take(used.numel()))
        self.refills += 1
        self._shuffle()

    def next_batch(self) -> torch.Tensor:
        """`[n_layers, batch_size, d_in]`: the next shuffled batch (same tokens for every layer)."""
        if not self.filled:
            self.fill()
        elif self.ptr + self.batch_size > self.capacity // 2:
            self.refill()
        idx = self.perm[self.ptr : self.ptr + self.batch_size].to(self.device)
        self.ptr += self.batch_size
        return self.storage.index_select(1, idx)

    def sample(self, n: int, layer_index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`[n, d_in]` random activations of one layer from the buffer (for resampling dead features)."""
        if not self.filled:
            self.fill()
        idx = torch.randperm(self.capacity, generator=generator or self.generator)[:n].to(self.device)
        return self.storage[layer_index].index_select(0, idx)

    def state_dict(self) -> dict:
        return {
            "storage": self.storage,
            "perm": self.perm,
            "ptr": self.ptr,
            "filled": self.filled,
            "pending": self.pending,
            "refills": self.refills,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.storage.copy_(state["storage"])
        self.perm = state["perm"].clone()
        self.ptr = int(state["ptr"])
        self.filled = bool(state["filled"])
        self.pending = state["pending"].to(self.device).clone()
        self.refills = int(state["refills"])
        self.generator.set_state(state["generator"])


def usable_token_ids(model) -> torch.Tensor:
    """`[n]` ids random-token sequences may use: the whole vocabulary except BOS/EOS/PAD and other special tokens.

    model: a `LoadedModel`."""
    special = {model.bos_token_id}
    tok = model.tokenizer
    for attr in ("eos_token_id", "pad_token_id", "unk_token_id"):
        v = getattr(tok, attr, None)
        if v is not None:
            special.add(int(v))
    special.update(int(i) for i in (getattr(tok, "all_special_ids", None) or []))
    keep = torch.ones(model.d_vocab, dtype=torch.bool)
    for i in special:
        if 0 <= i < model.d_vocab:
            keep[i] = False
    return keep.nonzero().flatten()
