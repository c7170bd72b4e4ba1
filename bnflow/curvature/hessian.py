"""Mini-batch loss curvature from Hessian-vector products: λ_max, top-k spectrum, batch sharpness (PROTOCOL §8).

H is the Hessian of the probed step's mini-batch loss L_B(θ) w.r.t. the probed parameters, with BN in whatever
mode the model is in (train mode: batch statistics, the function training actually differentiates; PROTOCOL §5).
Products Hv come from autograd double-backward on one retained graph: finite differences are useless on ReLU /
max-pool nets (PERFORMANCE.md). Quantities, with edge-of-stability in mind (Cohen et al. 2021, arXiv:2103.00065;
Andreyev & Beneventano 2024, arXiv:2412.20553; Ghorbani et al. 2019, arXiv:1901.10159 for outliers):
  λ_max             the largest ALGEBRAIC eigenvalue of H (what GD's stability threshold 2/lr is compared with);
  batch sharpness   gᵀHg / ‖g‖², g = ∇L_B(θ), on the same batch;
  top-subspace mass ‖Π_k g‖² / ‖g‖², Π_k the projector on the top-k eigenvectors.
Every function runs inside `probe_session` (fp32 with TF32/autocast off, model restored bit-identically). Vectors
are flat: the concatenation of the probed parameters in order, in their dtype and on their device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bnflow.probes.state import LossFn, ProbeError, Snapshot, probe_session, resolve_params, restore_forward_state


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (the layout every vector of this module uses)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into views shaped like `like` (inverse of `flatten`)."""
    sizes = [t.numel() for t in like]
    if vec.dim() != 1 or vec.numel() != sum(sizes):
        raise ProbeError(f"vector has shape {tuple(vec.shape)}, expected a flat vector of {sum(sizes)} entries "
                         "(the concatenation of the probed parameters)")
    return [part.view(t.shape) for part, t in zip(torch.split(vec, sizes), like)]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64 accumulation: Rayleigh quotients of fp32 vectors with ~10⁶–10⁷ entries lose digits otherwise.
    return torch.dot(a.to(torch.float64), b.to(torch.float64))


class LossHessian:
    """The Hessian of L_B at the model's current weights as a linear operator on flat vectors.

    Builds the graph of g = ∇L_B(θ) once (one forward + one create_graph backward) and answers each product
    Hv with one backward through it, so k products cost about one gradient plus k double-backwards. Only valid
    inside the `probe_session` whose snapshot is passed; drop the object before the session ends.

    Args:
        model, loss_fn, x, y: as in `bnflow.probes.landscape.landscape_probe`.
        snap: the session's snapshot; buffers and generators are reset to it before the forward.
        params: the parameters θ (requires_grad) the Hessian is taken w.r.t.
        before_forward: called before the forward (e.g. to reset the noise generator to the step's state).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, snap: Snapshot,
                 params: Sequence[nn.Parameter], before_forward: Callable[[], object] | None = None) -> None:
        restore_forward_state(model, snap)
        if before_forward is not None:
            before_forward()
        loss = loss_fn(model, x, y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ProbeError(f"loss_fn must return a 0-d tensor, got {type(loss).__name__} "
                             f"{getattr(loss, 'shape', '')}")
        self.params = list(params)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True, materialize_grads=True)
        self.loss = loss.detach()
        self.grad = flatten([g.detach() for g in grads])
        # Gradient entries that do not depend on θ (constant or unused) have zero Hessian rows: leave them out of
        # the double backward, which refuses outputs without a graph.
        self._live = [(g, i) for i, g in enumerate(grads) if g.requires_grad]
        self.n = self.grad.numel()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Hv for a flat vector v (same dtype/device as the parameters)."""
        if not self._live:
            return torch.zeros_like(v)
        parts = unflatten(v.detach(), self.params)
        out = torch.autograd.grad([g for g, _ in self._live], self.params,
                                  grad_outputs=[parts[i] for _, i in self._live],
                                  retain_graph=True, allow_unused=True, materialize_grads=True)
        return flatten([o.detach() for o in out])


def hvp(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, params: Iterable[nn.Parameter] | None,
        v: Sequence[torch.Tensor], *, before_forward: Callable[[], object] | None = None,
        generators: Iterable[torch.Generator] = ()) -> list[torch.Tensor]:
    """Hessian-vector product ∇²L_B(θ)·v by autograd double-backward (not finite differences).

    Args:
        model, loss_fn, x, y: the network, loss_fn(model, x, y) -> 0-d tensor, and the mini-batch B.
        params: parameters θ (None: all with requires_grad); v is aligned with them.
        v: tensors shaped like `params`.
        before_forward: called before the forward pass (noise-generator reset).
        generators: generators to save and restore besides the global ones.
    Returns:
        Hv as detached tensors shaped like `params`.
    """
    params = resolve_params(model, params)
    v = list(v)
    if len(v) != len(params) or any(not isinstance(a, torch.Tensor) or a.shape != p.shape for a, p in zip(v, params)):
        raise ProbeError(f"v must hold {len(params)} tensors shaped like params "
                         f"{[tuple(p.shape) for p in params]}, got {[tuple(getattr(a, 'shape', ())) for a in v]}")
    with probe_session(model, generators) as snap:
        op = LossHessian(model, loss_fn, x, y, snap, params, before_forward)
        vec = flatten([a.detach().to(device=p.device, dtype=p.dtype) for a, p in zip(v, params)])
        out = op.matvec(vec)
        return [t.clone() for t in unflatten(out, params)]


@dataclass(frozen=True, eq=False)
class EigResult:
    """Top eigenpairs of the mini-batch Hessian.

    Attributes:
        eigenvalues: (k,) float64, the k largest ALGEBRAIC eigenvalues, descending; eigenvalues[0] = λ_max.
            Each is the Rayleigh quotient vᵀHv of its unit eigenvector estimate (power iteration) or the Ritz
            value (Lanczos, the same quotient), so it lies inside the spectrum and never overshoots λ_max.
        eigenvectors: (k, n) flat unit vectors (parameter order of the probe), orthonormal for k > 1.
        iterations: Hessian-vector products used (both phases of a shifted power iteration counted).
        converged: whether the stopping rule was met before the iteration budget ran out.
        method: "power" or "lanczos".
        shift: the shift s used by the second power-iteration phase (0 if none; see `top_eigenvalues`).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    iterations: int
    converged: bool
    method: str
    shift: float = 0.0


def _random_unit(n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    return v / torch.linalg.vector_norm(v)


def _power(op: LossHessian, v: torch.Tensor, shift: float, iters: int, tol: float) -> tuple[float, torch.Tensor, int,
                                                                                              bool]:
    """Power iteration on H − shift·I from unit v.

    Returns (Rayleigh quotient vᵀHv of H, the unit vector v it belongs to, products used, converged).
    """
    lam_prev = None
    for it in range(1, iters + 1):
        w = op.matvec(v)
        lam = float(_dot(v, w))
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam):
            return lam, v, it, True
        if shift:
            w = w - shift * v
        norm = torch.linalg.vector_norm(w)
        if float(norm) == 0.0:  # v is an eigenvector of H − shift·I with eigenvalue 0: exact
            return lam, v, it, True
        if it == iters:
            break
        lam_prev, v = lam, w / norm
    return lam, v, iters, False


def _lanczos(op: LossHessian, v: torch.Tensor, k: int, iters: int, tol: float) -> tuple[np.ndarray, torch.Tensor,
                                                                                         int, bool]:
    """Lanczos with full re-orthogonalisation from unit v; the top-k Ritz pairs by value.

    Fewer than k pairs come back only if the Krylov space of v is exhausted first (an invariant subspace).
    """
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    for j in range(min(iters, op.n)):
        w = op.matvec(basis[j])
        alpha = float(_dot(basis[j], w))
        alphas.append(alpha)
        w = w - alpha * basis[j] - (betas[-1] * basis[j - 1] if j else 0.0)
        # Full re-orthogonalisation, twice ("twice is enough"): fp32 Lanczos loses orthogonality fast otherwise.
        q = torch.stack(basis)
        for _ in range(2):
            w = w - q.T @ (q @ w)
        beta = float(torch.linalg.vector_norm(w))
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(t)
        top = np.argsort(theta)[::-1][:k]
        # β ≈ 0: the Krylov space is invariant and the Ritz values are exact eigenvalues.
        exhausted = beta <= 1e-6 * max(float(np.abs(theta).max()), np.finfo(np.float64).tiny)
        if len(alphas) >= k:
            residual = np.abs(beta * s[-1, top])  # ‖Hu − θu‖ of the Ritz pair (θ, u = Qs)
            scale = np.maximum(np.abs(theta[top]), np.finfo(np.float64).tiny)
            if exhausted or np.all(residual <= tol * scale) or len(alphas) == op.n:
                converged = True
                break
        if exhausted:
            break
        betas.append(beta)
        basis.append(w / beta)
    q = torch.stack(basis[: len(alphas)])
    vecs = torch.as_tensor(s[:, top].T.copy(), dtype=q.dtype, device=q.device) @ q
    return theta[top], vecs, len(alphas), converged


def _eigs(op: LossHessian, k: int, iters: int, tol: float, generator: torch.Generator, method: str) -> EigResult:
    v0 = _random_unit(op.n, op.grad, generator)
    if method == "power":
        lam, v, used, ok = _power(op, v0, 0.0, iters, tol)
        shift = 0.0
        if lam < 0:
            # The dominant eigenvalue in magnitude is negative: on H − lam·I every eigenvalue is ≥ ~0 and the
            # dominant one is λ_max − lam, so a second run finds λ_max (Rayleigh quotient of H at its vector).
            shift = lam
            lam, v, used2, ok = _power(op, _random_unit(op.n, op.grad, generator), shift, iters, tol)
            used += used2
        vals, vecs = np.array([lam]), v[None]
    else:
        vals, vecs, used, ok = _lanczos(op, v0, k, iters, tol)
        shift = 0.0
    return EigResult(np.asarray(vals, dtype=np.float64), vecs, int(used), bool(ok), method, float(shift))


def _check_eig_args(k: int, iters: int, tol: float, generator, method: str) -> str:
    if not (isinstance(k, int) and k >= 1):
        raise ProbeError(f"k must be an int >= 1 (number of top eigenvalues), got {k!r}")
    if not (isinstance(iters, int) and iters >= 1):
        raise ProbeError(f"iters must be an int >= 1 (Hessian-vector products per run), got {iters!r}")
    if not (tol > 0):
        raise ProbeError(f"tol must be > 0, got {tol!r}")
    if not isinstance(generator, torch.Generator):
        raise ProbeError("generator must be a torch.Generator (the run's probe stream) for the starting vectors, "
                         f"got {type(generator).__name__}")
    if method == "auto":
        method = "power" if k == 1 else "lanczos"
    if method not in ("power", "lanczos"):
        raise ProbeError(f"method must be 'auto', 'power' or 'lanczos', got {method!r}")
    if method == "power" and k != 1:
        raise ProbeError(f"method='power' finds one eigenvalue; use method='lanczos' for k={k}")
    if method == "lanczos" and iters < k:
        raise ProbeError(f"iters={iters} < k={k}: Lanczos needs at least k products (its basis size)")
    return method


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    params: Iterable[nn.Parameter] | None = None, k: int = 1, iters: int = 100, tol: float = 1e-4,
                    generator: torch.Generator, before_forward: Callable[[], object] | None = None,
                    generators: Iterable[torch.Generator] = (), method: str = "auto") -> EigResult:
    """The k largest algebraic eigenvalues of the mini-batch Hessian (PROTOCOL §8, edge-of-stability λ_max).

    Power iteration finds the eigenvalue of largest MAGNITUDE, which early in training can be a negative one;
    then a second power iteration on H − λ·I (λ the negative value found) returns λ_max, the largest algebraic
    eigenvalue, which is what 2/lr is compared with. Lanczos (full re-orthogonalisation, basis of up to `iters`
    vectors kept in memory: iters × n × 4 bytes) returns the top-k algebraic eigenvalues directly. Power
    iteration's relative-change rule can stop early when λ₂/λ₁ is near 1 (a VGG-11 at init: 0.6% low at tol 1e-3,
    27 products); Lanczos's residual rule reached 4 digits in 17 products there, so prefer method="lanczos" for
    numbers that are reported.

    Args:
        model, loss_fn, x, y: the network (mode kept: train-mode BN), loss_fn(model, x, y) -> 0-d tensor, batch B.
        params: parameters the Hessian is taken w.r.t. (None: all with requires_grad).
        k: number of eigenvalues.
        iters: Hessian-vector products per power-iteration phase / Lanczos basis size.
        tol: power iteration stops when |λ_t − λ_{t−1}| ≤ tol·|λ_t|; Lanczos when every top-k Ritz pair has
            residual ‖Hu − θu‖ ≤ tol·|θ| (eigenvalue error then ≲ tol²θ²/gap).
        generator: draws the Gaussian starting vector(s) (on its own device); it is advanced.
        before_forward: called before the forward pass (noise-generator reset).
        generators: generators to save and restore besides the global ones.
        method: "auto" (power for k = 1, Lanczos for k > 1), "power" or "lanczos".
    Returns:
        EigResult; the model is left bit-identical.
    """
    method = _check_eig_args(k, iters, tol, generator, method)
    params = resolve_params(model, params)
    with probe_session(model, generators) as snap:
        op = LossHessian(model, loss_fn, x, y, snap, params, before_forward)
        return _eigs(op, k, iters, tol, generator, method)


def _sharpness(op: LossHessian, g: torch.Tensor) -> float:
    gg = float(_dot(g, g))
    return float(_dot(g, op.matvec(g))) / gg if gg > 0 else float("nan")


def batch_sharpness(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    params: Iterable[nn.Parameter] | None = None, grad: Sequence[torch.Tensor] | None = None,
                    before_forward: Callable[[], object] | None = None,
                    generators: Iterable[torch.Generator] = ()) -> float:
    """Batch sharpness gᵀH_B g / ‖g‖² on the batch (Andreyev & Beneventano 2024; compare with 2/lr).

    Args:
        model, loss_fn, x, y, params, before_forward, generators: as in `top_eigenvalues`.
        grad: the direction g aligned with `params` (e.g. the training step's gradient); None: ∇L_B(θ) computed
            here in fp32.
    Returns:
        The Rayleigh quotient of H along g (NaN when g = 0).
    """
    params = resolve_params(model, params)
    with probe_session(model, generators) as snap:
        op = LossHessian(model, loss_fn, x, y, snap, params, before_forward)
        g = op.grad if grad is None else _flat_like(grad, params, "grad")
        return _sharpness(op, g)


def _flat_like(tensors: Sequence[torch.Tensor], params: Sequence[nn.Parameter], what: str) -> torch.Tensor:
    tensors = list(tensors)
    if len(tensors) != len(params) or any(t.shape != p.shape for t, p in zip(tensors, params)):
        raise ProbeError(f"{what} must hold {len(params)} tensors shaped like the probed parameters, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    return flatten([t.detach().to(device=p.device, dtype=p.dtype) for t, p in zip(tensors, params)])


def gradient_in_top_subspace(g: torch.Tensor | Sequence[torch.Tensor], eigenvectors: torch.Tensor) -> float:
    """Fraction ‖Π g‖² / ‖g‖² of the gradient's squared norm in the span of the given eigenvectors.

    Args:
        g: flat vector (n,) or tensors in the probe's parameter order (flattened here).
        eigenvectors: (k, n) flat vectors (EigResult.eigenvectors); they are re-orthonormalised (float64 QR).
    Returns:
        A number in [0, 1]; NaN when g = 0.
    """
    g = g if isinstance(g, torch.Tensor) else flatten(g)
    g = g.reshape(-1).to(torch.float64)
    e = eigenvectors.to(device=g.device, dtype=torch.float64)
    if e.dim() != 2 or e.shape[1] != g.numel():
        raise ProbeError(f"eigenvectors must be (k, {g.numel()}) to match g, got {tuple(e.shape)}")
    gg = float(torch.dot(g, g))
    if gg == 0:
        return float("nan")
    q, _ = torch.linalg.qr(e.T)
    c = q.T @ g
    return min(1.0, float(torch.dot(c, c)) / gg)


@dataclass(frozen=True, eq=False)
class CurvatureResult:
    """Everything `curvature_probe` measures at one step (one shared graph)."""

    loss: float
    grad_norm: float
    eig: EigResult
    batch_sharpness: float
    grad_top_fraction: float

    def to_row(self, step: int, lr: float | None = None) -> dict:
        """Tidy row: step, loss, grad_norm, lambda_max, lambda_2.. (k > 1), batch_sharpness, grad_top_fraction,
        eig_iters, eig_converged, and lr·λ_max, lr·batch_sharpness (edge of stability at 2) when lr is given."""
        row = {"step": int(step), "loss": self.loss, "grad_norm": self.grad_norm,
               "lambda_max": float(self.eig.eigenvalues[0])}
        row |= {f"lambda_{i + 1}": float(v) for i, v in enumerate(self.eig.eigenvalues[1:], start=1)}
        row |= {"batch_sharpness": self.batch_sharpness, "grad_top_fraction": self.grad_top_fraction,
                "eig_iters": self.eig.iterations, "eig_converged": self.eig.converged}
        if lr is not None:
            row |= {"lr_lambda_max": lr * row["lambda_max"], "lr_batch_sharpness": lr * self.batch_sharpness}
        return row


def curvature_probe(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    params: Iterable[nn.Parameter] | None = None, k: int = 1, iters: int = 100, tol: float = 1e-4,
                    generator: torch.Generator, before_forward: Callable[[], object] | None = None,
                    generators: Iterable[torch.Generator] = (), method: str = "auto") -> CurvatureResult:
    """λ_max (top-k), batch sharpness and the gradient's top-subspace fraction from ONE forward/backward graph.

    Arguments as in `top_eigenvalues`. g is ∇L_B(θ) recomputed here in fp32 (not the training step's possibly
    TF32/bf16 gradient), so all three numbers refer to the same function. Cost: one forward, one create_graph
    backward, and (eig products + 1) double-backwards.
    """
    method = _check_eig_args(k, iters, tol, generator, method)
    params = resolve_params(model, params)
    with probe_session(model, generators) as snap:
        op = LossHessian(model, loss_fn, x, y, snap, params, before_forward)
        eig = _eigs(op, k, iters, tol, generator, method)
        sharp = _sharpness(op, op.grad)
        frac = gradient_in_top_subspace(op.grad, eig.eigenvectors)
        return CurvatureResult(float(op.loss), float(torch.linalg.vector_norm(op.grad.to(torch.float64))), eig,
                               sharp, frac)
