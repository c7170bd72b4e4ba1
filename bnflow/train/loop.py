"""One training run: SGD steps with device-side metrics, checkpoints, resume states and divergence detection.

Step numbering: update t (t = 0 .. steps-1) uses the weights θ_t and step t's mini-batch; "the weights at step s"
are θ_s, after s updates. A train row at step t holds the loss/accuracy of step t's mini-batch at θ_t; a test row at
step s evaluates θ_s; checkpoint `step{s}` holds θ_s.

Resume: at the first host sync after every `resume_every_s` seconds, the run's whole state (weights, BN buffers, optimiser state, noise-generator state,
metrics so far, wall time) is written atomically to the run's scratch folder. Data order is a stateless function of
(seed, epoch), so a run killed at any moment and restarted continues bit-identically (on CPU) from that state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnflow.io import atomic_path
from bnflow.train.graphs import GraphedStep, graphs_supported
from bnflow.probes.activations import recording

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
    probe sees the step's own noise) and what built the model, in a file `torch.load(weights_only=True)` reads."""
    state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"step": step, "state_dict": state, "meta": meta,
                    "noise_state": [g.get_state() for g in generators]}, tmp)


def _save_resume(path: Path, model, opt, generators, outcome: RunOutcome, next_step: int, fingerprint: str) -> None:
    with atomic_path(path, durable=False) as tmp:
        torch.save({
            "fingerprint": fingerprint,
            "next_step": next_step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generators": [g.get_state() for g in generators],
            "tables": outcome.tables,
            "wall_s": outcome.wall_s,
        }, tmp)


def _load_resume(path: Path, model, opt, generators, fingerprint: str) -> tuple[int, RunOutcome] | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: resume state is from different params; starting this run afresh", path)
        return None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
    outcome = RunOutcome(tables=state["tables"], wall_s=float(state["wall_s"]), resumed_from=state["next_step"])
    return int(state["next_step"]), outcome


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
    resumed = _load_resume(resume_path, model, opt, task.generators, fingerprint)
    if resumed is not None:
        start, outcome = resumed
        log.info("%s: resuming at step %d", cfg.run_id, start)
    checkpoints = set(cfg.checkpoint_steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    # Per-step metrics stay on the device and are copied out every sync_every steps: no host sync in the hot loop.
    losses = torch.zeros(cfg.sync_every, dtype=torch.float32, device=device)
    corrects = torch.zeros(cfg.sync_every, dtype=torch.int64, device=device)
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

    def flush() -> bool:
        """Copy pending metrics to rows; return False (and mark the run diverged) on a non-finite loss."""
        if not pending:
            return True
        host_loss = losses[:len(pending)].tolist()
        host_correct = corrects[:len(pending)].tolist()
        wall = time.perf_counter() - t_start
        for i, t in enumerate(pending):
            finite = math.isfinite(host_loss[i])
            if t % cfg.log_every == 0 or t == cfg.steps - 1 or not finite:
                acc = host_correct[i] / batch_size if task.correct_is_defined else None
                outcome.tables["metrics"].append(
                    {"step": t, "split": "train", "loss": host_loss[i], "acc": acc, "wall_s": wall})
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
            outcome.tables["metrics"].append({"step": step, "split": "test", "loss": loss, "acc": acc,
                                              "wall_s": time.perf_counter() - t_start})

    def eager_step(t: int, batch, probing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        noise_state = [g.get_state() for g in task.generators] if probing else None
        with autocast, (recording(model, prober.plan.activation_layers, prober.plan.options.activation_point)
                        if probing else contextlib.nullcontext()) as acts:
            out = model(batch.x)
        loss = task.loss(out.float(), batch.y)
        opt.zero_grad(set_to_none=graphed is None)  # a captured graph keeps writing into the same .grad tensors
        loss.backward()
        if probing:
            # The step's own fp32 gradient is g; under bf16 the probes recompute it in fp32 (PROTOCOL §5).
            fp32 = cfg.precision == "fp32"
            grads = {p: p.grad for p in model.parameters() if p.grad is not None} if fp32 else None
            for name, rows in prober.probe(t, batch.x, batch.y, grads=grads, noise_state=noise_state,
                                           acts=acts if fp32 else None).items():
                outcome.tables.setdefault(name, []).extend(rows)
        opt.step()
        return out, loss

    for t in range(start, cfg.steps):
        if t in checkpoints:
            save_checkpoint(ckpt_dir / f"step{t:06d}.pt", model, t, ckpt_meta, task.generators)
        if cfg.eval_every is not None and t % cfg.eval_every == 0:
            evaluate(t)
        batch = task.batch(t)
        batch_size = len(batch.y)
        probing = prober is not None and probe_every > 0 and t % probe_every == 0
        if use_graphs and not probing:
            if graphed is None:
                graphed = GraphedStep(model, opt, task.loss, batch.x, batch.y, autocast, task.generators)
            out, loss = graphed(batch.x, batch.y)
        else:
            out, loss = eager_step(t, batch, probing)
        slot = len(pending)
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
            if cfg.progress_every_s and time.perf_counter() - last_progress >= cfg.progress_every_s:
                last_progress = time.perf_counter()
                rate = (done - start) / max(1e-9, last_progress - proc_start)
                _progress(cfg, done, outcome, rate)
    else:
        outcome.n_steps = cfg.steps
        if cfg.steps in checkpoints:
            save_checkpoint(ckpt_dir / f"step{cfg.steps:06d}.pt", model, cfg.steps, ckpt_meta, task.generators)
        if cfg.eval_every is not None:
            evaluate(cfg.steps)
    outcome.wall_s = time.perf_counter() - t_start
    return outcome


def _progress(cfg: LoopConfig, done: int, outcome: RunOutcome, rate: float) -> None:
    last = next((r for r in reversed(outcome.tables["metrics"]) if r["split"] == "train"), None)
    eta = (cfg.steps - done) / rate if rate > 0 else float("inf")
    log.info("%s: step %d/%d (%.0f%%) %.1f steps/s ETA %.0fs loss %s", cfg.run_id, done, cfg.steps,
             100.0 * done / cfg.steps, rate, eta, f"{last['loss']:.4g}" if last else "-")
