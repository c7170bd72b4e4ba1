"""Packed execution (train.numerics.mode: packed, issue 16): the S seeds of one VGG cell trained as one PackedVGG.

The GPU then sees S-times-wider kernels and one launch stream instead of S small launch-bound runs. Each seed's
numbers are those of its separate run up to float summation order (bnflow.models.packed), and each seed gets what
bnflow.train.loop.train_loop gives a separate run: metrics rows, test evaluations, checkpoint files (same format,
meta and noise_state), dense probe tables and its own divergence. Step t runs as in train_loop: checkpoint θ_t, test
evaluation, (probes), the update, metrics; host syncs every sync_every steps.

Single-seed views: each seed's VggTask keeps its own single model; at a checkpoint, evaluation or probe step the
packed weights and buffers of seed i are copied into it (`unpack_state`), so checkpoints, `task.evaluate()` and
bnflow.probes.runner.Prober run on exactly the code a separate run uses. Probes run before the packed update, on
the step's own batch and noise state, and recompute g in fp32 (PROTOCOL §5) instead of borrowing the packed step's.

A seed whose loss turns non-finite is recorded as diverged at that step (as train_loop does: rows up to it, and only
the checkpoints up to it), its slices are zeroed and it gets nothing more; the other seeds train on unaffected
(grouped layers never mix seeds).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bnflow.errors import ConfigError, DataError
from bnflow.io import atomic_path
from bnflow.models.packed import pack_vgg, packed_correct, packed_losses, unpack_state, zero_seed
from bnflow.probes.checkpoint import CorruptStateError, checkpoint_name, load_checkpoint, load_sealed, seal
from bnflow.probes.runner import Prober
from bnflow.tasks import VggTask
from bnflow.train.graphs import GraphedStep, graphs_supported
from bnflow.train.loop import LoopConfig, RunOutcome, clear_checkpoints, save_checkpoint

log = logging.getLogger("bnflow.train")
RESUME_FILE = "resume.pt"


class PackedBatches:
    """Step t's packed mini-batch: seed i's images in channels [3i, 3i+3), its labels in column i.

    One gather from the device-resident uint8 data of all seeds' indices (each from its own stateless data order),
    normalised with the same elementwise ops as VggTask.normalise, so seed i's slice equals tasks[i].batch(t).x;
    then cast to `dtype` (the packed model's: float64 in exactness tests, else a no-op).
    """

    def __init__(self, tasks: Sequence[VggTask], channels_last: bool, dtype: torch.dtype = torch.float32):
        base = tasks[0]
        for i, t in enumerate(tasks):
            if t.data_info.get("source_sha256") != base.data_info.get("source_sha256") or t.n_train != base.n_train:
                raise DataError(f"packed seeds need one dataset; seed position {i} has {t.data_info.get('path')}, "
                                f"seed position 0 {base.data_info.get('path')}")
        self.tasks, self.channels_last, self.dtype = list(tasks), channels_last, dtype
        s = len(tasks)
        self.scale, self.shift = base.scale.repeat(1, s, 1, 1), base.shift.repeat(1, s, 1, 1)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S*3, H, W) float32 normalised, y (B, S) int64."""
        base = self.tasks[0]
        idx = torch.stack([t.batch_indices(step) for t in self.tasks])  # (S, B)
        u8 = base.train_x[idx]  # (S, B, H, W, C)
        s, b, h, w, c = u8.shape
        # (B, H, W, S*C) in memory, seen as NCHW: channels_last, as VggTask's single batches are on a GPU
        x = u8.permute(1, 2, 3, 0, 4).reshape(b, h, w, s * c).permute(0, 3, 1, 2).float()
        if not self.channels_last:
            x = x.contiguous()
        return (x * self.scale - self.shift).to(self.dtype), base.train_y[idx].T.contiguous()


@dataclass
class _State:
    """What a resumed packed run needs besides the model and optimiser: which seeds live, and their outcomes."""

    alive: list[bool]
    outcomes: list[RunOutcome]


def train_packed(tasks: Sequence[VggTask], cfg: LoopConfig, scratch: Path, ckpt_dirs: Sequence[Path],
                 ckpt_metas: Sequence[dict[str, Any]], fingerprint: str,
                 probers: Sequence[Prober | None] | None = None, probe_every: int = 0, *,
                 before_step: Callable[[int], None] | None = None, channels_last: bool | None = None,
                 compile_mode: str | None = None) -> list[RunOutcome]:
    """Train every task's model packed for cfg.steps SGD steps; one RunOutcome per task, in task order.

    Args:
        tasks: one VggTask per seed of one cell (same dataset, arch and variant); their models hold the initial
            weights and serve as the seeds' single-model views afterwards (they end holding no particular step).
        cfg: the loop settings train_seed uses (run_id only labels log lines).
        scratch: folder for the packed run's resume state (`resume.pt`).
        ckpt_dirs, ckpt_metas: per seed, where its checkpoints go and the meta they carry (as train_loop's; the
            meta's fingerprint is checked when a resume builds on them).
        fingerprint: of the packed run (a resume state with another one is set aside).
        probers: per seed, its Prober (None: no dense probes), probing every `probe_every` steps.
        before_step: called with t at the start of every step (benchmark clocks).
        channels_last: NHWC activations [default: on CUDA]. compile_mode: torch.compile mode of the forward.
    """
    s, device = len(tasks), tasks[0].device
    probers = list(probers) if probers is not None else [None] * s
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model = pack_vgg([t.model for t in tasks]).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if tasks[0].generators:
        model.set_noise_generators([t.generators[0] if t.generators else None for t in tasks])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batches = PackedBatches(tasks, channels_last, next(model.parameters()).dtype)
    if cfg.cuda_graphs and compile_mode:
        raise ConfigError("packed execution: cuda_graphs and torch.compile are exclusive; choose one")
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    start, state = 0, _State([True] * s, [RunOutcome() for _ in tasks])
    resumed = _load_resume(scratch / RESUME_FILE, model, opt, tasks, fingerprint, ckpt_dirs, ckpt_metas,
                           cfg.checkpoint_steps)
    if resumed is not None:
        start, state = resumed
        log.info("%s: packed run resuming at step %d", cfg.run_id, start)
    for d, o in zip(ckpt_dirs, state.outcomes):  # stale: other params, or saved after the state we continue from
        clear_checkpoints(d, keep=_held(cfg.checkpoint_steps, start, o))
    use_graphs, why_not = graphs_supported(device, cfg.momentum, cfg.weight_decay)
    if cfg.cuda_graphs and tasks[0].generators:
        use_graphs, why_not = False, "noisy variants train eagerly (each step draws from per-seed generators)"
    if cfg.cuda_graphs and not use_graphs:
        log.info("%s: not using CUDA graphs: %s", cfg.run_id, why_not)
    use_graphs, graphed = use_graphs and cfg.cuda_graphs, None
    checkpoints = set(cfg.checkpoint_steps)
    losses = torch.zeros(cfg.sync_every, s, dtype=torch.float32, device=device)
    corrects = torch.zeros(cfg.sync_every, s, dtype=torch.int64, device=device)
    penalties = torch.zeros(cfg.sync_every, s, dtype=torch.float32, device=device) if cfg.weight_decay else None
    pending: list[int] = []
    views_at = [-1]  # the step whose weights the single-model views hold
    proc_start = last_progress = last_resume = time.perf_counter()
    t_start = proc_start - state.outcomes[0].wall_s

    def alive() -> list[int]:
        return [i for i in range(s) if state.alive[i]]

    def penalty() -> torch.Tensor:
        """½·wd·‖θ_i‖² per seed (S,), as train_loop's penalty of a single model."""
        with torch.no_grad():
            sq = torch.stack([p.detach().float().pow(2).reshape(s, -1).sum(1) for p in model.parameters()]).sum(0)
        return 0.5 * cfg.weight_decay * sq

    def views(t: int) -> None:
        if views_at[0] != t:
            packed_state = model.state_dict()
            for i in alive():
                tasks[i].model.load_state_dict(unpack_state(packed_state, i, s))
            views_at[0] = t

    def at_boundary(t: int) -> None:
        """Checkpoint θ_t and evaluate it, per live seed, through its single-model view."""
        if t in checkpoints:
            views(t)
            for i in alive():
                save_checkpoint(ckpt_dirs[i] / checkpoint_name(t), tasks[i].model, t, ckpt_metas[i],
                                tasks[i].generators)
        if cfg.eval_every is not None and (t % cfg.eval_every == 0 or t == cfg.steps):
            views(t)
            pen = penalty().tolist() if penalties is not None else None
            for i in alive():
                loss, acc = tasks[i].evaluate()
                row = {"step": t, "split": "test", "loss": loss, "acc": acc}
                state.outcomes[i].tables["metrics"].append(row if pen is None else row | {"penalty": pen[i]})

    def probe(t: int) -> None:
        views(t)
        for i in alive():
            if probers[i] is not None:
                batch = tasks[i].batch(t)
                noise_state = [g.get_state() for g in tasks[i].generators]
                for name, rows in probers[i].probe(t, batch.x, batch.y, noise_state=noise_state).items():
                    state.outcomes[i].tables.setdefault(name, []).extend(rows)

    def flush(batch_size: int) -> None:
        """Copy pending metrics to each live seed's rows; a non-finite loss marks that seed diverged."""
        host_loss, host_correct = losses[:len(pending)].tolist(), corrects[:len(pending)].tolist()
        host_pen = penalties[:len(pending)].tolist() if penalties is not None else None
        for i in alive():
            out = state.outcomes[i]
            for j, t in enumerate(pending):
                finite = math.isfinite(host_loss[j][i])
                if t % cfg.log_every == 0 or t == cfg.steps - 1 or not finite:
                    row = {"step": t, "split": "train", "loss": host_loss[j][i], "acc": host_correct[j][i] / batch_size}
                    out.tables["metrics"].append(row if host_pen is None else row | {"penalty": host_pen[j][i]})
                if not finite:
                    out.diverged, out.diverged_at_step, out.n_steps = True, t, t
                    state.alive[i] = False
                    zero_seed(model, i, s, opt)
                    # saved after the divergence, before this sync noticed it: blown-up weights (as train_loop drops)
                    clear_checkpoints(ckpt_dirs[i], keep=_held(cfg.checkpoint_steps, cfg.steps + 1, out))
                    log.info("%s: seed position %d diverged at step %d; the others train on", cfg.run_id, i, t)
                    break
        pending.clear()

    for t in range(start, cfg.steps):
        if before_step is not None:
            before_step(t)
        at_boundary(t)
        if probe_every > 0 and t % probe_every == 0:
            probe(t)
        x, y = batches(t)
        if penalties is not None:
            penalties[len(pending)] = penalty()  # at θ_t, before the update
        if use_graphs:
            if graphed is None:
                graphed = GraphedStep(model, opt, lambda o, yy: packed_losses(o, yy).sum(), x, y, autocast, [])
            logits, _ = graphed(x, y)
            per_seed = packed_losses(logits.float(), y)  # the graph's own output, before its update
        else:
            with autocast:
                logits = forward(x)
            per_seed = packed_losses(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            per_seed.sum().backward()
            opt.step()
        views_at[0] = -1
        losses[len(pending)] = per_seed.detach()
        corrects[len(pending)] = packed_correct(logits.detach(), y)
        pending.append(t)
        done = t + 1
        if len(pending) == cfg.sync_every or done == cfg.steps:
            flush(len(y))
            if not any(state.alive):
                break
            if done < cfg.steps and time.perf_counter() - last_resume >= cfg.resume_every_s:
                for o in state.outcomes:
                    o.wall_s = time.perf_counter() - t_start
                _save_resume(scratch / RESUME_FILE, model, opt, tasks, state, done, fingerprint)
                last_resume = time.perf_counter()
        if cfg.progress_every_s and time.perf_counter() - last_progress >= cfg.progress_every_s:
            last_progress = time.perf_counter()
            rate = (done - start) * len(alive()) / max(1e-9, last_progress - proc_start)
            log.info("%s: packed step %d/%d, %d live seeds, %.1f steps/s in total", cfg.run_id, done, cfg.steps,
                     len(alive()), rate)
    else:
        for i in alive():
            state.outcomes[i].n_steps = cfg.steps
        at_boundary(cfg.steps)
    wall = time.perf_counter() - t_start
    for o in state.outcomes:
        o.wall_s = wall  # one shared clock: the packed run's wall time, not one seed's share of it
    return state.outcomes


def _held(checkpoint_steps: Sequence[int], next_step: int, out: RunOutcome) -> tuple[int, ...]:
    """The checkpoints a seed holds before step `next_step`: those saved, up to its divergence step if it diverged."""
    return tuple(c for c in checkpoint_steps if c < next_step and (not out.diverged or c <= out.diverged_at_step))


def _save_resume(path: Path, model, opt, tasks, state: _State, next_step: int, fingerprint: str) -> None:
    saved = {"fingerprint": fingerprint, "next_step": next_step, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "generators": [[g.get_state() for g in t.generators] for t in tasks],
             "alive": state.alive, "outcomes": [asdict(o) for o in state.outcomes]}
    # a file object: torch.save names records after a path's file name, which holds a pid (train_loop does the same)
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as f:
        torch.save(seal(saved), f)


def _set_aside(path: Path, why: str) -> None:
    aside = path.with_name(path.name + ".bad")
    with contextlib.suppress(OSError):
        os.replace(path, aside)
    log.warning("%s; set aside as %s; the packed run starts again from step 0", why, aside.name)


def _load_resume(path: Path, model, opt, tasks, fingerprint: str, ckpt_dirs: Sequence[Path],
                 ckpt_metas: Sequence[dict[str, Any]], checkpoint_steps: Sequence[int]) -> tuple[int, _State] | None:
    """The intact state of these params whose earlier checkpoints are intact too, loaded; else None (step 0)."""
    if not path.exists():
        return None
    try:
        saved = load_sealed(path, "packed resume state")
    except CorruptStateError as e:
        _set_aside(path, str(e))
        return None
    if saved.get("fingerprint") != fingerprint:
        _set_aside(path, f"{path}: resume state is from different params or seeds")
        return None
    start = int(saved["next_step"])
    # a state that fails half-way through loading must leave the fresh model and generators as they were
    fresh = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()),
             [[g.get_state() for g in t.generators] for t in tasks])
    try:
        outcomes = [RunOutcome(**{**o, "resumed_from": start}) for o in saved["outcomes"]]
        for d, meta, out in zip(ckpt_dirs, ckpt_metas, outcomes, strict=True):
            for c in _held(checkpoint_steps, start, out):
                load_checkpoint(d / checkpoint_name(c), cell_id=meta.get("cell"), seed=meta.get("seed"),
                                fingerprint=meta.get("fingerprint"))
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        for t, states in zip(tasks, saved["generators"], strict=True):
            for g, st in zip(t.generators, states, strict=True):
                g.set_state(st)
    except (DataError, OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        model.load_state_dict(fresh[0])
        opt.load_state_dict(fresh[1])
        for t, states in zip(tasks, fresh[2]):
            for g, st in zip(t.generators, states):
                g.set_state(st)
        why = "a checkpoint it builds on is unusable" if isinstance(e, (DataError, OSError)) else \
            "it does not fit the packed model"  # an intact file of another shape
        _set_aside(path, f"{path}: resume state set aside: {why} ({type(e).__name__}: {e})")
        return None
    return start, _State(list(saved["alive"]), outcomes)
