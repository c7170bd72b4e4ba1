"""One training run: SGD steps with device-side metrics, checkpoints, resume states and divergence detection.

Step numbering: update t (t = 0 .. steps-1) uses the weights θ_t and step t's mini-batch; "the weights at step s"
are θ_s, after s updates. A train row at step t holds the loss/accuracy of step t's mini-batch at θ_t; a test row at
step s evaluates θ_s; checkpoint `step{s}` holds θ_s.

Resume: at the first host sync after every `resume_every_s` seconds, the run's whole state (weights, BN buffers,
optimiser state, noise-generator state, metrics so far, wall time) is written atomically to the run's scratch folder.
Data order is a stateless function of (seed, epoch), so a run killed at any moment and restarted continues
bit-identically (on CPU) from that state. Checkpoints and resume states carry a sha256 of their content; a resume
state that is unreadable, damaged, from other params, or whose earlier checkpoints are missing or damaged is set
aside with a warning and the run starts again from step 0.

Metrics: a train row's `loss` is the data loss of step t's mini-batch; with weight decay the SGD step also
minimises ½·wd·‖θ‖², logged separately as `penalty` (the probes measure the data loss only).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnflow.errors import DataError
from bnflow.io import atomic_path
from bnflow.probes.activations import recording
from bnflow.probes.checkpoint import CorruptStateError, checkpoint_name, load_checkpoint, load_sealed, seal
from bnflow.train.graphs import GraphedStep, graphs_supported

log = logging.getLogger("bnflow.train")
RESUME_FILE = "resume.pt"


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs to know, whatever the task."""

    run_id: str
    lr: float
    steps: int
    log_every: int
    eval_every: int | None  # None: the task has no test set (DLN)
    checkpoint_steps: tuple[int, ...]
    momentum: float
    weight_decay: float
    precision: str
    sync_every: int
    resume_every_s: float
    progress_every_s: float
    cuda_graphs: bool = False


@dataclass
class RunOutcome:
    """Tidy tables by name ("metrics" and, with dense probes, bnflow.probes.runner.TABLES) and the run's fate."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"metrics": []})
    diverged: bool = False
    diverged_at_step: int | None = None
    n_steps: int = 0
    wall_s: float = 0.0
    resumed_from: int | None = None


def save_checkpoint(path: Path, model: torch.nn.Module, step: int, meta: dict[str, Any],
                    generators: list[torch.Generator]) -> None:
    """θ_step, the BN/ℓp buffers, the noise-generator states before step `step`'s forward (so a checkpoint-wise
    probe sees the step's own noise) and what built the model, in a file `torch.load(weights_only=True)` reads,
    sealed with the sha256 of its content (bnflow.probes.checkpoint.load_checkpoint verifies it)."""
    state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    _save_sealed(path, {"step": step, "state_dict": state, "meta": meta,
                        "noise_state": [g.get_state() for g in generators]}, durable=True)


def _save_sealed(path: Path, state: dict, *, durable: bool) -> None:
    # Through a file object: torch.save names the archive's records after a path's file name, which for the
    # temporary file holds a pid; a file object gives the same bytes for the same content.
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        torch.save(seal(state), f)


def _save_resume(path: Path, model, opt, generators, outcome: RunOutcome, next_step: int, fingerprint: str) -> None:
    _save_sealed(path, {
        "fingerprint": fingerprint,
        "next_step": next_step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "generators": [g.get_state() for g in generators],
        "tables": outcome.tables,
        "wall_s": outcome.wall_s,
    }, durable=False)


def _set_aside(path: Path, why: str) -> None:
    """Keep an unusable resume state for inspection (resume.pt.bad) and say that the run starts again."""
    aside = path.with_name(path.name + ".bad")
    with contextlib.suppress(OSError):
        os.replace(path, aside)
    log.warning("%s; set aside as %s; this run starts again from step 0", why, aside.name)


def clear_checkpoints(ckpt_dir: Path, keep: tuple[int, ...] = ()) -> None:
    """Delete the checkpoints in `ckpt_dir` except those of the steps in `keep` (they are rewritten when reached)."""
    names = {checkpoint_name(s) for s in keep}
    for p in ckpt_dir.glob("step*.pt"):
        if p.name not in names:
            p.unlink()


def _load_resume(path: Path, model, opt, generators, fingerprint: str, ckpt_dir: Path, ckpt_meta: dict[str, Any],
                 checkpoint_steps: tuple[int, ...]) -> tuple[int, RunOutcome] | None:
    """The saved state to continue from, loaded into model/opt/generators; None to start at step 0.

    Nothing of a state is used unless it is intact (its sha256), from these params (its fingerprint), and every
    checkpoint the run saved before it is intact and from these params too.
    """
    if not path.exists():
        return None
    try:
        state = load_sealed(path, "resume state")
    except CorruptStateError as e:
        _set_aside(path, str(e))
        return None
    if state.get("fingerprint") != fingerprint:
        _set_aside(path, f"{path}: resume state is from different params")
        return None
    start = int(state["next_step"])
    for s in (c for c in checkpoint_steps if c < start):
        try:
            load_checkpoint(ckpt_dir / checkpoint_name(s), cell_id=ckpt_meta.get("cell"), seed=ckpt_meta.get("seed"),
                            fingerprint=fingerprint)
        except (DataError, OSError) as e:
            _set_aside(path, f"{path}: the checkpoint of step {s} it builds on is unusable ({e})")
            return None
    # An intact state of these params that still does not fit (bnflow's code changed the model) may fail half-way
    # through loading: keep the initial state to start from instead.
    initial = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()),
               [g.get_state() for g in generators])
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for g, s in zip(generators, state["generators"], strict=True):
            g.set_state(s)
        outcome = RunOutcome(tables=state["tables"], wall_s=float(state["wall_s"]), resumed_from=start)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        model.load_state_dict(initial[0])
        opt.load_state_dict(initial[1])
        for g, s in zip(generators, initial[2], strict=True):
            g.set_state(s)
        _set_aside(path, f"{path}: resume state does not fit the model ({type(e).__name__}: {e})")
        return None
    return start, outcome


def can_lend_gradients(device: torch.device, precision: str) -> bool:
    """Whether the training step's own gradients may serve as the probes' g and G (PROTOCOL §5).

    The probes compute ∇L(θ − ηg) and G' in fp32 with TF32 off; g and G must be of the same precision, else the
    precision gap (~1e-3 ‖G‖ under TF32) reads as gradient change or ICS. A CPU fp32 step is exact; a CUDA step is
    only when TF32 is off for both cuBLAS and cuDNN (cuDNN's default is on); a bf16 step never is.
    """
    if precision != "fp32":
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    b = torch.backends
    try:
        return not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32
    except RuntimeError:  # torch >= 2.9 refuses the legacy getters once the new API set a mix
        return b.cuda.matmul.fp32_precision == "ieee" and b.cudnn.conv.fp32_precision == "ieee"


def train_loop(task, cfg: LoopConfig, scratch: Path, ckpt_dir: Path, ckpt_meta: dict[str, Any],
               fingerprint: str, prober=None, probe_every: int = 0) -> RunOutcome:
    """Train `task.model` for cfg.steps SGD steps (or until divergence), writing checkpoints into `ckpt_dir`.

    With a `prober` (bnflow.probes.runner.Prober), every `probe_every` steps the probes run between the step's
    backward and its update, on the step's own batch, gradient, noise and activations; they restore everything
    they touch, so training stays bit-identical to a run without probes.
    """
    model, device = task.model, task.device
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    resume_path = scratch / RESUME_FILE
    start, outcome = 0, RunOutcome()
    resumed = _load_resume(resume_path, model, opt, task.generators, fingerprint, ckpt_dir, ckpt_meta,
                           cfg.checkpoint_steps)
    if resumed is not None:
        start, outcome = resumed
        log.info("%s: resuming at step %d", cfg.run_id, start)
    # Checkpoints not built on by the state we continue from are stale (other params, or saved after that state).
    clear_checkpoints(ckpt_dir, keep=tuple(c for c in cfg.checkpoint_steps if c < start))
    checkpoints = set(cfg.checkpoint_steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    lend = can_lend_gradients(device, cfg.precision)

    # Per-step metrics stay on the device and are copied out every sync_every steps: no host sync in the hot loop.
    losses = torch.zeros(cfg.sync_every, dtype=torch.float32, device=device)
    corrects = torch.zeros(cfg.sync_every, dtype=torch.int64, device=device)
    penalties = torch.zeros(cfg.sync_every, dtype=torch.float32, device=device) if cfg.weight_decay else None
    pending: list[int] = []
    batch_size = None
    use_graphs, why_not = graphs_supported(device, cfg.momentum, cfg.weight_decay)
    if cfg.cuda_graphs and task.generators:
        use_graphs, why_not = False, "noisy variants train eagerly (noise-generator states are reset by probes)"
    if cfg.cuda_graphs and not use_graphs:
        log.info("%s: not using CUDA graphs: %s", cfg.run_id, why_not)
    use_graphs = use_graphs and cfg.cuda_graphs
    graphed = None
    proc_start = last_progress = last_resume = time.perf_counter()
    t_start = proc_start - outcome.wall_s  # wall time accumulates across resumes

    def penalty() -> torch.Tensor:
        """½·wd·‖θ‖² at the current weights (the term SGD's weight_decay adds to the loss), on the device."""
        with torch.no_grad():
            sq = torch.stack([p.detach().float().pow(2).sum() for p in model.parameters()]).sum()
        return 0.5 * cfg.weight_decay * sq

    def flush() -> bool:
        """Copy pending metrics to rows; return False (and mark the run diverged) on a non-finite loss."""
        if not pending:
            return True
        host_loss = losses[:len(pending)].tolist()
        host_correct = corrects[:len(pending)].tolist()
        host_penalty = penalties[:len(pending)].tolist() if penalties is not None else None
        for i, t in enumerate(pending):
            finite = math.isfinite(host_loss[i])
            if t % cfg.log_every == 0 or t == cfg.steps - 1 or not finite:
                acc = host_correct[i] / batch_size if task.correct_is_defined else None
                row = {"step": t, "split": "train", "loss": host_loss[i], "acc": acc}
                if host_penalty is not None:
                    row["penalty"] = host_penalty[i]
                outcome.tables["metrics"].append(row)
            if not finite:
                outcome.diverged, outcome.diverged_at_step, outcome.n_steps = True, t, t
                pending.clear()
                return False
        pending.clear()
        return True

    def evaluate(step: int) -> None:
        result = task.evaluate()
        if result is not None:
            loss, acc = result
            row = {"step": step, "split": "test", "loss": loss, "acc": acc}
            if penalties is not None:
                row["penalty"] = float(penalty())
            outcome.tables["metrics"].append(row)

    def eager_step(t: int, batch, probing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        noise_state = [g.get_state() for g in task.generators] if probing else None
        record = probing and lend and prober.plan.records_activations(t)
        with autocast, (recording(model, prober.plan.activation_layers, prober.plan.options.activation_point)
                        if record else contextlib.nullcontext()) as acts:
            out = model(batch.x)
        loss = task.loss(out.float(), batch.y)
        opt.zero_grad(set_to_none=graphed is None)  # a captured graph keeps writing into the same .grad tensors
        loss.backward()
        if probing:
            # g and G must be exact fp32 like the probes' own passes (PROTOCOL §5): the step's gradient is lent
            # only when it is (can_lend_gradients); otherwise the probes recompute it with TF32 and autocast off.
            grads = {p: p.grad for p in model.parameters() if p.grad is not None} if lend else None
            for name, rows in prober.probe(t, batch.x, batch.y, grads=grads, noise_state=noise_state,
                                           acts=acts if lend else None).items():
                outcome.tables.setdefault(name, []).extend(rows)
        opt.step()
        return out, loss

    log.info("%s: training steps %d..%d", cfg.run_id, start, cfg.steps)
    for t in range(start, cfg.steps):
        if t in checkpoints:
            save_checkpoint(ckpt_dir / checkpoint_name(t), model, t, ckpt_meta, task.generators)
        if cfg.eval_every is not None and t % cfg.eval_every == 0:
            evaluate(t)
        batch = task.batch(t)
        batch_size = len(batch.y)
        probing = prober is not None and probe_every > 0 and t % probe_every == 0
        slot = len(pending)
        if penalties is not None:
            penalties[slot] = penalty()  # at θ_t, before the update
        if use_graphs and not probing:
            if graphed is None:
                graphed = GraphedStep(model, opt, task.loss, batch.x, batch.y, autocast, task.generators)
            out, loss = graphed(batch.x, batch.y)
        else:
            out, loss = eager_step(t, batch, probing)
        losses[slot] = loss.detach()
        correct = task.correct(out.detach(), batch.y)
        if correct is not None:
            corrects[slot] = correct
        pending.append(t)
        done = t + 1
        if len(pending) == cfg.sync_every or done == cfg.steps:
            if not flush():
                break
            outcome.wall_s = time.perf_counter() - t_start
            if done < cfg.steps and time.perf_counter() - last_resume >= cfg.resume_every_s:
                _save_resume(resume_path, model, opt, task.generators, outcome, done, fingerprint)
                last_resume = time.perf_counter()
        # checked every step (a clock read, no device sync), so slow steps never leave a long silence
        if cfg.progress_every_s and time.perf_counter() - last_progress >= cfg.progress_every_s:
            last_progress = time.perf_counter()
            _progress(cfg, done, outcome, (done - start) / max(1e-9, last_progress - proc_start))
    else:
        outcome.n_steps = cfg.steps
        if cfg.steps in checkpoints:
            save_checkpoint(ckpt_dir / checkpoint_name(cfg.steps), model, cfg.steps, ckpt_meta, task.generators)
        if cfg.eval_every is not None:
            evaluate(cfg.steps)
    outcome.wall_s = time.perf_counter() - t_start
    return outcome


def _progress(cfg: LoopConfig, done: int, outcome: RunOutcome, rate: float) -> None:
    last = next((r for r in reversed(outcome.tables["metrics"]) if r["split"] == "train"), None)
    eta = (cfg.steps - done) / rate if rate > 0 else float("inf")
    log.info("%s: step %d/%d (%.0f%%) %.1f steps/s ETA %.0fs loss %s", cfg.run_id, done, cfg.steps,
             100.0 * done / cfg.steps, rate, eta, f"{last['loss']:.4g}" if last else "-")
