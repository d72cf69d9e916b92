"""The maths of one training step: losses and hand-written gradients for each trainable architecture.

Two ways to handle the decoder's row norms (`decoder_norm`):

- "unit" (the paper's recipe): rows are held at unit norm; the gradient component parallel to each row is removed
  before the Adam step and the rows are renormalised after it.
- "rescale" (SAELens's `rescale_acts_by_decoder_norm`, its top-k default): rows are free parameters `W_dec`, and
  the SAE computed is the one with unit rows `U_i = W_dec_i / n_i`, encoder `E_i = W_enc_i n_i` and bias
  `b_enc_i n_i` (`n_i = |W_dec_i|`). Rows start at norm 0.1 with the encoder their transpose, so at a given Adam
  learning rate the decoder's directions move about ten times as far per step as unit rows do. Saving folds the
  norms in (`sae.engine.autoencoder.fold_decoder_norm`), which leaves the function unchanged.

Either way a latent's activation is its contribution's norm, so top-k compares latents fairly and L1 cannot be
gamed by growing the decoder.

Shapes: x `[B, d_in]`, pre / f `[B, d_sae]`, top-k indices and values `[B, k]`, x_hat `[B, d_in]`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from sae.engine.selection import topk_rows

if TYPE_CHECKING:
    from sae.engine.autoencoder import SAE

# The sparse path: a `[B, d_sae]` activation matrix with few active entries per row (top-k always, a standard SAE
# once it is sparse) is decoded with `embedding_bag` (the k rows of W_dec summed, weighted), the gradient reaching each
# active value is that op's per-sample-weight gradient, and the two weight gradients `f^T @ d_xhat` and `d_pre^T @ x`
# are CSR `[d_sae, B]` x dense products over one by-latent ordering of the entries, built once per step. Dense and
# sparse give the same numbers to float rounding (tests/training/test_train_steps.py). Measured on one thread of this
# 2-core CPU at batch 4096, 128 -> 1024, k 24: decode + both weight gradients + the rows' dot products 13 ms sparse
# vs 80 ms dense (the encoder's matmul alone: 17 ms). `SPARSE_TOPK` None picks by `use_sparse`; True/False force one.
SPARSE_TOPK: bool | None = None
SPARSE_RATIO = 8  # CPU: sparse once d_sae >= 8 x the active entries per row
SPARSE_RATIO_OTHER = 64  # other devices (the earlier rule, never measured there against this path)
torch.sparse.check_sparse_tensor_invariants.disable()  # built here, valid by construction; silences the warning
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


def use_sparse(device: torch.device, d_sae: int, per_row: float) -> bool:
    """Whether the sparse path pays for `per_row` active entries per row of `d_sae` latents on `device`."""
    if SPARSE_TOPK is not None:
        return SPARSE_TOPK
    return d_sae >= (SPARSE_RATIO if device.type == "cpu" else SPARSE_RATIO_OTHER) * per_row


DECODER_NORMS = ("rescale", "unit")


@dataclass(frozen=True)
class StepSettings:
    """What one training step of one SAE needs beyond its weights and batch.

    `sparsity`: the architecture's sparsity value (k for top-k, the L1 coefficient for standard);
    `decoder_norm`: "unit" or "rescale" (see the module docstring); `dead [d_sae]`: the latents AuxK may use (None:
    no AuxK); `aux_k`, `aux_coeff`: AuxK's size and weight."""

    sparsity: float
    decoder_norm: str = "unit"
    dead: torch.Tensor | None = None
    aux_k: int = 0
    aux_coeff: float = 0.0


@dataclass(frozen=True)
class StepOutput:
    """What one step computed (its gradients are in the parameters' `.grad`): `loss` (scalar, what was
    minimised), `mse` (squared error summed over d_in, mean over the batch), `aux` (the unweighted sparsity term:
    L1 for standard, AuxK for top-k), `fired [d_sae]` (how many of the batch's tokens each latent fired on) and
    `x_hat [B, d_in]` (the reconstruction)."""

    loss: torch.Tensor
    mse: torch.Tensor
    aux: torch.Tensor
    fired: torch.Tensor
    x_hat: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        """`out["mse"]` reads the field `mse` (for callers written against the earlier mapping)."""
        return getattr(self, name)


def encoder_bias(sae: SAE) -> torch.Tensor:
    """`[d_sae]`: `b_enc - b_dec @ W_enc` (the pre-encoder b_dec folded into the encoder bias)."""
    return sae.b_enc - sae.b_dec @ sae.W_enc if sae.cfg.apply_b_dec_to_input else sae.b_enc


def sae_forward_train(sae: SAE, x: torch.Tensor, decoder_norm: str = "unit") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable forward for autograd training (autocast): `(pre [B, d_sae], f [B, d_sae], x_hat [B, d_in])`.
    With `decoder_norm="rescale"` the SAE is the effective one (`effective_weights`)."""
    w = effective_weights(sae) if decoder_norm == "rescale" else sae
    pre = torch.addmm(encoder_bias(w), x, w.W_enc)
    f = sae.activation(pre)
    x_hat = torch.addmm(w.b_dec, f, w.W_dec)
    return pre, f, x_hat


@dataclass
class EffectiveWeights:
    """The SAE a "rescale" parametrisation computes, as plain tensors the step functions read (and whose
    `.grad` they fill): `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]` (unit rows), `b_enc [d_sae]`, `b_dec [d_in]`."""

    cfg: object
    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    norms: torch.Tensor | None = None  # [d_sae], the free rows' norms n (None for a plain SAE's view)


def effective_weights(sae: SAE) -> EffectiveWeights:
    """The SAE a "rescale" parametrisation computes (differentiable in `sae`'s parameters): unit rows
    `W_dec / n`, encoder `W_enc * n`, bias `b_enc * n` with `n = |W_dec_i|`; b_dec as it is."""
    n = sae.W_dec.norm(dim=-1).clamp_min(1e-8)  # [d_sae]
    return EffectiveWeights(sae.cfg, sae.W_enc * n, sae.W_dec / n.unsqueeze(-1), sae.b_enc * n, sae.b_dec, n)


@torch.no_grad()
def rescaled_step_grads(sae: SAE, step: Callable[..., StepOutput], *args, **kwargs) -> StepOutput:
    """Run `step` (`topk_step_grads` or `standard_step_grads`) on the effective SAE of a "rescale" parametrisation
    and carry its gradients back to the free parameters, filling `sae`'s `.grad`.

    With `n_i = |W_dec_i|`, `U_i = W_dec_i / n_i`, `E = W_enc * n`, `c = b_enc * n`: `dW_enc = dE * n`,
    `db_enc = dc * n`, and `dW_dec_i = (I - U_i U_i^T) dU_i / n_i + (dE_{:,i} . W_enc_{:,i} + dc_i b_enc_i) U_i`.
    """
    eff = effective_weights(sae)
    eff.b_dec = sae.b_dec.detach().clone()  # the step sets .grad on it; the parameter's own is set below
    n, U = eff.norms, eff.W_dec
    out = step(eff, *args, **kwargs)
    gE, gU, gc, gbd = eff.W_enc.grad, eff.W_dec.grad, eff.b_enc.grad, eff.b_dec.grad
    dn = (gE * sae.W_enc).sum(0) + gc * sae.b_enc  # [d_sae]
    g_dec = gU.sub_((gU * U).sum(-1, keepdim=True) * U).div_(n.unsqueeze(-1)).add_(dn.unsqueeze(-1) * U)
    for p, g in ((sae.W_enc, gE.mul_(n)), (sae.W_dec, g_dec), (sae.b_enc, gc.mul_(n)), (sae.b_dec, gbd)):
        p.grad = g
    return out


@torch.no_grad()
def init_decoder_norm(sae: SAE, norm: float) -> SAE:
    """SAELens's heuristic init for "rescale" training (Anthropic's 2024 update): decoder rows at `norm`, the
    encoder their transpose."""
    sae.W_dec.mul_(norm / sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
    sae.W_enc.copy_(sae.W_dec.T)
    return sae


def standard_loss(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, l1_coeff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, mse, l1)`: mse = sum over d_in of (x_hat - x)^2, mean over batch; l1 = mean over batch of sum_i |f_i|."""
    mse = (x_hat - x).pow(2).sum(-1).mean()
    l1 = f.abs().sum(-1).mean()
    return mse + l1_coeff * l1, mse, l1


def topk_aux_loss(
    sae: SAE, x: torch.Tensor, pre: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, aux_k: int,
    decoder_norm: str = "unit",
) -> torch.Tensor:
    """AuxK (Gao et al. 2024) as SAELens computes it: the `aux_k` largest pre-activations among the `dead [d_sae]`
    latents (as they are, no ReLU, so a latent whose pre-activations are all negative still gets a gradient) decode
    the residual `x - x_hat` (detached), no decoder bias; summed squared error over d_in, mean over batch, scaled
    by min(1, n_dead / aux_k). Zero when nothing is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    kk = min(aux_k, n_dead)
    vals, idx = pre.masked_fill(~dead, float("-inf")).topk(kk, dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, idx, vals)
    resid = (x - x_hat).detach()
    W_dec = effective_weights(sae).W_dec if decoder_norm == "rescale" else sae.W_dec
    return min(1.0, n_dead / aux_k) * (f_aux @ W_dec - resid).pow(2).sum(-1).mean()


@torch.no_grad()
def remove_parallel_grad(sae: SAE) -> None:
    """Remove from each decoder row's gradient its component along that (unit-norm) row."""
    g, w = sae.W_dec.grad, sae.W_dec
    if g is not None:
        g.sub_((g * w).sum(-1, keepdim=True) * w)


# ---- sparse activations: decode and weight gradients through the active entries only ---------------------------


class Active:
    """The active entries of a `[B, d_sae]` activation matrix: `cols [nnz]` (latent ids, row-major) with `crow [B+1]`
    (row r's entries are `crow[r]:crow[r+1]`; None when every row holds `per_row` entries and `cols` is `[B, per_row]`),
    and, built once, their order by latent for the CSR `[d_sae, B]` products (`outer`)."""

    def __init__(self, cols: torch.Tensor, rows: torch.Tensor, d_sae: int, n_rows: int,
                 crow: torch.Tensor | None = None) -> None:
        self.cols, self.rows, self.crow, self.d_sae, self.n_rows = cols, rows, crow, d_sae, n_rows
        flat = cols.reshape(-1)
        self.order = torch.argsort(flat, stable=True)  # entries by latent, rows ascending within one
        self.rows_by_latent = rows.reshape(-1)[self.order]
        self.counts = torch.bincount(flat, minlength=d_sae)  # [d_sae] entries per latent
        self.crow_by_latent = torch.zeros(d_sae + 1, dtype=torch.int64, device=cols.device)
        torch.cumsum(self.counts, 0, out=self.crow_by_latent[1:])

    @classmethod
    def fixed(cls, idx: torch.Tensor, d_sae: int) -> Active:
        """`idx [B, k]`: k entries in every row (top-k)."""
        b, k = idx.shape
        rows = torch.arange(b, device=idx.device).repeat_interleave(k)
        return cls(idx, rows, d_sae, b)

    @classmethod
    def of_mask(cls, active: torch.Tensor) -> tuple[Active, torch.Tensor]:
        """`active [B, d_sae]` bool -> (the entries, `flat_index [nnz]` into the flattened matrix, row-major)."""
        b, d_sae = active.shape
        flat_index = active.view(-1).nonzero().squeeze(1)
        rows, cols = flat_index // d_sae, flat_index % d_sae
        crow = torch.zeros(b + 1, dtype=torch.int64, device=active.device)
        torch.cumsum(torch.bincount(rows, minlength=b), 0, out=crow[1:])
        return cls(cols, rows, d_sae, b, crow), flat_index

    def _bags(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(indices [nnz], offsets [B])`: the entries as `embedding_bag`'s bags, one per row."""
        if self.crow is not None:
            return self.cols, self.crow[:-1]
        k = self.cols.shape[1]
        return self.cols.reshape(-1), torch.arange(0, self.n_rows * k, k, device=self.cols.device)

    def decode(self, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """`[B, d_in]`: `sum_e vals[e] W[cols[e]]` over each row's entries (`embedding_bag`, weighted sum)."""
        indices, offsets = self._bags()
        return F.embedding_bag(indices, W, offsets, mode="sum", per_sample_weights=vals.reshape(-1))

    def rows_dot(self, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Each entry's `g[row] . W[col]` (`g [B, d_in]`), shaped as `cols`: the gradient reaching an entry's value
        from the one reaching its row's decoded sum. `embedding_bag`'s per-sample-weight gradient, called as the
        aten op so that no autograd graph is built (the autograd engine's first use also imports sympy, ~1 s)."""
        indices, offsets = self._bags()
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(g, W, indices, offsets, self.rows.reshape(-1),  # noqa: SLF001 - aten op, public in torch.ops
                                                                         0, -1)
        return out.view(self.cols.shape)

    def outer(self, vals: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """`[d_sae, d]`: `M^T @ rhs` for `M [B, d_sae]` holding `vals` at the entries (`rhs [B, d]`)."""
        m = torch.sparse_csr_tensor(self.crow_by_latent, self.rows_by_latent, vals.reshape(-1)[self.order],
                                    (self.d_sae, self.n_rows))
        return m @ rhs

    def column_sums(self, vals: torch.Tensor) -> torch.Tensor:
        """`[d_sae]`: the sum of `vals` over each latent's entries."""
        return torch.zeros(self.d_sae, dtype=vals.dtype, device=vals.device).index_add_(
            0, self.cols.reshape(-1), vals.reshape(-1))


# ---- standard: hand-written backward -------------------------------------------------------------------------


def _set_grads(sae: SAE, g_W_enc, g_W_dec, g_b_enc, g_b_dec) -> None:
    if sae.cfg.apply_b_dec_to_input:  # pre = (x - b_dec) @ W_enc + b_enc
        g_W_enc.addr_(sae.b_dec, g_b_enc, alpha=-1.0)
        g_b_dec -= sae.W_enc @ g_b_enc
    for p, g in ((sae.W_enc, g_W_enc), (sae.W_dec, g_W_dec), (sae.b_enc, g_b_enc), (sae.b_dec, g_b_dec)):
        p.grad = g


STANDARD_SPARSE_DENSITY = 0.1  # the standard step goes sparse once at most this share of entries is active (CPU;
# measured at 128 -> 1024, batch 4096, one thread: sparse 58 vs dense 92 ms at 5%, 92 vs 101 at 10%, 118 vs 101 at 15%)


@torch.no_grad()
def standard_step_grads(sae: SAE, x: torch.Tensor, l1_coeff: float, sparse: bool | None = None) -> StepOutput:
    """The standard SAE's loss and gradients written out by hand (fp32), filling `.grad` of every parameter.

    Same loss as `standard_loss` on `sae_forward_train`, without autograd's bookkeeping: five matmuls and four
    passes over the `[B, d_sae]` activations (dense), or the encoder's matmul and the rest through the active
    entries (`Active`), which this step picks when at most `STANDARD_SPARSE_DENSITY` of them are active (`sparse`
    None; True/False force one).
    """
    n = x.shape[0]
    W_enc, W_dec = sae.W_enc, sae.W_dec
    f = torch.addmm(encoder_bias(sae), x, W_enc).relu_()  # [B, d_sae]
    active = f > 0
    if sparse is None:
        sparse = SPARSE_TOPK if SPARSE_TOPK is not None else (
            x.device.type == "cpu" and int(torch.count_nonzero(active)) <= STANDARD_SPARSE_DENSITY * active.numel())
    if sparse:
        act, flat_index = Active.of_mask(active)
        vals = f.view(-1).index_select(0, flat_index)  # [nnz]
        x_hat = act.decode(vals, W_dec).add_(sae.b_dec)
        err = x_hat - x
        mse = err.pow(2).sum() / n
        l1 = vals.sum() / n
        d_xhat = err.mul_(2.0 / n)
        g_W_dec = act.outer(vals, d_xhat)
        g_b_dec = d_xhat.sum(0)
        d_pre = act.rows_dot(d_xhat, W_dec).add_(l1_coeff / n)  # [nnz]
        g_W_enc = act.outer(d_pre, x).T.contiguous()
        g_b_enc = act.column_sums(d_pre)
        _set_grads(sae, g_W_enc, g_W_dec, g_b_enc, g_b_dec)
        return StepOutput(mse + l1_coeff * l1, mse, l1, act.counts.float(), x_hat)
    x_hat = torch.addmm(sae.b_dec, f, W_dec)  # [B, d_in]
    err = x_hat - x
    mse = err.pow(2).sum() / n
    l1 = f.sum() / n  # f >= 0, so |f| = f
    d_xhat = err.mul_(2.0 / n)  # d loss / d x_hat
    g_W_dec = f.T @ d_xhat
    g_b_dec = d_xhat.sum(0)
    # d loss / d pre = (d_xhat @ W_dec^T + l1/n) where pre > 0, else 0 (ReLU's backward: one pass, no bool product)
    d_pre = torch.ops.aten.threshold_backward(torch.addmm(d_xhat.new_full((1,), l1_coeff / n), d_xhat, W_dec.T), f, 0.0)
    g_W_enc = x.T @ d_pre
    g_b_enc = d_pre.sum(0)
    _set_grads(sae, g_W_enc, g_W_dec, g_b_enc, g_b_dec)
    return StepOutput(mse + l1_coeff * l1, mse, l1, active.sum(0, dtype=torch.float32), x_hat)


# ---- top-k: hand-written backward through the k active rows --------------------------------------------------


def _dense(idx: torch.Tensor, vals: torch.Tensor, width: int) -> torch.Tensor:
    """`[B, width]` zeros with `vals [B, k]` at columns `idx [B, k]`."""
    return torch.zeros(idx.shape[0], width, dtype=vals.dtype, device=vals.device).scatter_add_(1, idx, vals)


@torch.no_grad()
def topk_step_grads(
    sae: SAE, x: torch.Tensor, k: int, dead: torch.Tensor | None, aux_k: int, aux_coeff: float,
    sparse: bool | None = None, select: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] = topk_rows,
) -> StepOutput:
    """The top-k SAE's loss `mse + aux_coeff * AuxK` and its gradients by hand, filling `.grad`.

    Same loss as `sae_forward_train` + `topk_aux_loss` under autograd. Only the encoder's forward is a dense
    `[B, d_in] x [d_in, d_sae]` matmul; with `sparse` (None: `use_sparse`) decoding, the decoder's gradient and
    the encoder's gradient go through the k active entries per row (`Active`), and AuxK through the dead columns
    only. `dead [d_sae]` marks the latents AuxK may use (None: no AuxK). `select(pre, k)` picks each row's top k
    (`sae.engine.selection.topk_rows`; `attnscope bench select` passes others).
    """
    n, d_sae = x.shape[0], sae.cfg.d_sae
    if sparse is None:
        sparse = use_sparse(x.device, d_sae, k)
    W_enc, W_dec = sae.W_enc, sae.W_dec
    pre = torch.addmm(encoder_bias(sae), x, W_enc)  # [B, d_sae]
    vals, idx = select(pre, k)  # [B, k]
    fires = vals > 0
    a = vals.relu()
    if sparse:
        act = Active.fixed(idx, d_sae)
        x_hat = act.decode(a, W_dec)
    else:
        f = _dense(idx, a, d_sae)  # the [B, d_sae] activations, for the decode and the decoder's gradient
        x_hat = f @ W_dec
    x_hat.add_(sae.b_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / n
    d_xhat = err * (2.0 / n)
    g_b_dec = d_xhat.sum(0)
    fired = torch.bincount(idx[fires], minlength=d_sae).float()
    if sparse:
        d_a = act.rows_dot(d_xhat, W_dec).mul_(fires)  # [B, k]
        g_W_dec = act.outer(a, d_xhat)
        g_W_enc_t = act.outer(d_a, x)  # [d_sae, d_in]
        g_b_enc = act.column_sums(d_a)
    else:
        d_a = (d_xhat @ W_dec.T).gather(1, idx).mul_(fires)
        g_W_dec = f.T @ d_xhat
        d_pre = _dense(idx, d_a, d_sae)
        g_W_enc_t = d_pre.T @ x
        g_b_enc = d_pre.sum(0)
    aux = x.new_zeros(())
    n_dead = int(dead.sum()) if dead is not None else 0
    if n_dead:
        # AuxK works on the dead columns only: [B, n_dead] pre-activations, decoder rows W_dec[dead], dense there
        kk = min(aux_k, n_dead)
        scale = min(1.0, n_dead / aux_k)
        dead_idx = dead.nonzero().flatten()
        pre_d = pre.index_select(1, dead_idx)  # [B, n_dead]
        W_d = W_dec.index_select(0, dead_idx)  # [n_dead, d_in]
        if kk < n_dead:
            av, local = pre_d.topk(kk, dim=-1)
            f_d = _dense(local, av, n_dead)  # no ReLU on AuxK activations (SAELens)
        else:
            f_d = pre_d
        e_err = torch.addmm(err, f_d, W_d)  # e_hat - (x - x_hat) = e_hat + err
        aux = scale * e_err.pow(2).sum() / n
        d_ehat = e_err.mul_(2.0 * aux_coeff * scale / n)
        d_fd = d_ehat @ W_d.T  # [B, n_dead]
        if kk < n_dead:
            d_fd = _dense(local, d_fd.gather(1, local), n_dead)
        g_W_dec.index_add_(0, dead_idx, f_d.T @ d_ehat)
        g_W_enc_t.index_add_(0, dead_idx, d_fd.T @ x)
        g_b_enc.index_add_(0, dead_idx, d_fd.sum(0))
    _set_grads(sae, g_W_enc_t.T.contiguous(), g_W_dec, g_b_enc, g_b_dec)
    return StepOutput(mse + aux_coeff * aux, mse, aux, fired, x_hat)


# ---- a step of any architecture ------------------------------------------------------------------------------


def hand_written_step(step_grads: Callable[[SAE, torch.Tensor, StepSettings], StepOutput], sae: SAE,
                      x: torch.Tensor, s: StepSettings) -> StepOutput:
    """An architecture's hand-written fp32 step `step_grads(sae, x, s)`, carried back to the free parameters
    under `decoder_norm="rescale"` (`rescaled_step_grads`)."""
    if s.decoder_norm == "rescale":
        return rescaled_step_grads(sae, step_grads, x, s)
    return step_grads(sae, x, s)


def autograd_step(loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]], sae: SAE,
                  x: torch.Tensor, s: StepSettings, dtype: torch.dtype) -> StepOutput:
    """An architecture's loss `loss_fn(sae, x, pre, f, x_hat, s) -> (loss, mse, aux)` on `sae_forward_train`,
    under autocast to `dtype`, backpropagated by autograd into fresh `.grad`s."""
    for p in sae.parameters():
        p.grad = None
    with torch.autocast(x.device.type, dtype=dtype):
        pre, f, x_hat = sae_forward_train(sae, x, s.decoder_norm)
        loss, mse, aux = loss_fn(sae, x, pre, f, x_hat, s)
    loss.backward()
    return StepOutput(loss, mse, aux, (f > 0).sum(0).float(), x_hat)
