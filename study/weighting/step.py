"""The trainer's side of a method: compute task losses, run the backward passes the method needs.

* Loss weighting only (EW, RLW, UW, ...): one backward pass of ``sum_i w_i L_i + reg``.
* Gradient aggregator at ``level: parameters``: T backward passes (graph retained) give the rows of
  ``G`` (T x d, the shared parameters) written into one persistent buffer; each pass also returns the
  task's head gradients (and the gradients of learnable loss weights), accumulated into ``.grad``, so the
  heads keep their own unweighted gradients with no extra backward. The aggregator's direction is
  written into the shared ``.grad`` as views of one vector.
* Gradient aggregator at ``level: representation``: the encoder runs once, the heads run on a detached
  copy of the shared features; T cheap head backwards give the rows of ``G`` at the features and one
  encoder backward carries the aggregated direction.
* GradNorm (``needs_gradients``): T extra backwards from each loss to the last shared weight only.
* FAMO (``needs_post_step_losses``): :meth:`MethodStep.after_step` recomputes the batch's losses after the
  optimizer step (no grad), as the official code does.
* MOML (``needs_validation``): :meth:`MethodStep.next_validation_batch` gives the bilevel step its
  validation batch; the trial loop installs the stream with :meth:`set_validation_batches`.

Non-finite policy (the same for every method): nothing is repaired or skipped. Losses are checked by the
trial loop every ``nan_check_every`` steps and at each epoch end (one sync each); methods whose math
runs on the host raise :class:`~study.weighting.base.NonFiniteError` when the Gramian or losses they
read are not finite; device-only methods let the NaN reach the parameters, so the next loss check fails.
The trial loop turns both into :class:`~study.errors.DivergedError` (trial status ``diverged``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from study.errors import SpecError
from study.weighting.base import (
    GradAggregator,
    GramianAggregator,
    LossWeighting,
    forward_accepts_context,
    gramian_of,
)


class MethodStep(nn.Module):
    def __init__(self, model: nn.Module, weighting: LossWeighting | None, aggregator: GradAggregator | None):
        super().__init__()
        self.model_ref = [model]  # not a submodule: the model is checkpointed on its own
        self.weighting = weighting
        self.aggregator = aggregator
        self.last_weights: Tensor | None = None
        check_combination(weighting, aggregator)
        if aggregator is not None and aggregator.level == "representation" and not getattr(
            model, "has_shared_representation", False
        ):
            raise SpecError("method", f"{aggregator.name} works on the shared representation, which "
                                      f"{type(model).__name__} does not have; use level: parameters")
        if aggregator is not None and hasattr(aggregator, "bind_model"):
            try:
                aggregator.bind_model(model)
            except ValueError as exc:
                raise SpecError("method.aggregator", str(exc)) from None
        if weighting is not None and hasattr(weighting, "bind_tasks") and hasattr(model, "tasks"):
            try:
                weighting.bind_tasks(tuple(model.tasks))
            except ValueError as exc:
                raise SpecError("method.weighting", str(exc)) from None
        self._agg_context = aggregator is not None and forward_accepts_context(aggregator)
        self._shared: list[nn.Parameter] | None = None
        self._extra: list[nn.Parameter] | None = None
        self._gbufs: dict[tuple, Tensor] = {}
        self._pviews: tuple | None = None
        self._batch: tuple[Any, Any] | None = None
        self._problem = None
        self._val_factory: Callable[[int], Iterator] | None = None
        self._val_iter: Iterator | None = None
        self._val_epoch = 0

    @property
    def model(self) -> nn.Module:
        return self.model_ref[0]

    @property
    def needs_validation(self) -> bool:
        return bool(self.weighting is not None and self.weighting.needs_validation)

    # -- forward ------------------------------------------------------------------------------
    def task_losses(self, problem, outs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        return torch.stack([problem.loss(t, outs[t], targets[t]) for t in problem.tasks])

    def losses(self, problem, inputs: Any, targets: dict[str, Tensor]) -> Tensor:
        self._problem = problem
        if self.weighting is not None and (self.weighting.needs_post_step_losses or self.weighting.needs_validation):
            self._batch = (inputs, targets)
        if self.aggregator is not None and self.aggregator.level == "representation":
            rep = self.model.encode(inputs)
            if isinstance(rep, dict):
                raise SpecError("method", f"{self.aggregator.name} at level: representation needs a "
                                          "single-input problem; use level: parameters")
            self._rep = rep
            self._rep_d = rep.detach().requires_grad_()
            if hasattr(self.aggregator, "task_inputs"):  # RotoGrad: each head sees its own rotation
                views = self.aggregator.task_inputs(self._rep_d)
                outs = {t: self.model.decoders[t](v) for t, v in zip(problem.tasks, views)}
            else:
                outs = self.model.decode(self._rep_d)
        else:
            outs = self.model(inputs)
        return self.task_losses(problem, outs, targets)

    # -- backward -----------------------------------------------------------------------------
    def backward(self, losses: Tensor, rng: np.random.Generator) -> None:
        wt = self.weighting
        if wt is None:
            w = None
        elif wt.needs_validation:
            w = wt.meta_step(self, losses, rng)
        elif wt.needs_gradients:
            w = wt(losses, rng, grads=self._last_layer_norms(losses))
        else:
            w = wt(losses, rng)
        self.last_weights = None if w is None else w.detach()
        reg = wt.regularizer() if wt is not None else 0.0
        if self.aggregator is None:
            total = losses.sum() if w is None else (w * losses).sum()
            if isinstance(reg, Tensor) or reg != 0.0:
                total = total + reg
            total.backward()
            return
        weighted = losses if w is None else w * losses
        if isinstance(reg, Tensor) and reg.requires_grad:
            reg.backward()
        if self.aggregator.level == "representation":
            self._backward_representation(weighted, losses, rng)
        else:
            self._backward_parameters(weighted, losses, rng)

    def after_step(self) -> None:
        """Called by the trial loop after ``optimizer.step()``."""
        wt = self.weighting
        if wt is not None and wt.needs_post_step_losses and self._batch is not None:
            inputs, targets = self._batch
            with torch.no_grad():
                new = self.task_losses(self._problem, self.model(inputs), targets)
            wt.after_step(new)
        self._batch = None
        self._rep = self._rep_d = None

    # -- gradient methods ---------------------------------------------------------------------
    def _shared_params(self) -> list[nn.Parameter]:
        if self._shared is None:
            self._shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        return self._shared

    def _extra_params(self) -> list[nn.Parameter]:
        """Parameters that keep their own gradients: task-specific ones and learnable loss weights."""
        if self._extra is None:
            shared = {id(p) for p in self._shared_params()}
            extra = [p for p in self.model.parameters() if p.requires_grad and id(p) not in shared]
            if self.weighting is not None:
                extra += [p for p in self.weighting.parameters() if p.requires_grad]
            self._extra = extra
        return self._extra

    def _buffer(self, T: int, d: int, like: Tensor) -> Tensor:
        key = (T, d, like.device, like.dtype)
        buf = self._gbufs.get(key)
        if buf is None:
            if len(self._gbufs) >= 2:  # e.g. full and last (short) batch at the representation
                self._gbufs.pop(next(iter(self._gbufs)))
            buf = self._gbufs[key] = torch.empty(T, d, device=like.device, dtype=like.dtype)
        return buf

    def _param_views(self, T: int, d: int, like: Tensor) -> tuple[Tensor, list[list[Tensor]], Tensor, list[Tensor]]:
        """``G`` (``T x d``), its rows cut into per-parameter views, and the flat gradient buffer of the
        shared parameters with its per-parameter views; allocated once, reused every step."""
        G = self._buffer(T, d, like)
        cached = self._pviews
        if cached is not None and cached[0] is G:
            return cached
        shared = self._shared_params()
        flat = torch.empty(d, device=like.device, dtype=like.dtype)

        def cut(vec: Tensor) -> list[Tensor]:
            out, offset = [], 0
            for p in shared:
                out.append(vec[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            return out

        self._pviews = (G, [cut(G[i]) for i in range(T)], flat, cut(flat))
        return self._pviews

    def _aggregate(self, G: Tensor, losses: Tensor, rep: Tensor | None, rng: np.random.Generator) -> Tensor:
        if self._agg_context:
            return self.aggregator(G, rng, losses=losses.detach(), rep=rep)
        return self.aggregator(G, rng)

    @staticmethod
    def _accumulate(params: list[nn.Parameter], grads) -> None:
        for p, g in zip(params, grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def _backward_parameters(self, weighted: Tensor, losses: Tensor, rng: np.random.Generator) -> None:
        """T backward passes into the rows of ``G``, the aggregator, and the direction into ``.grad``.

        No per-step allocation of ``O(T d)``: ``G`` and a flat gradient buffer are allocated once; each
        pass's gradients are copied into their row views with one ``_foreach_copy_``. For Gramian
        aggregators (the common case) the step forms ``G G^T`` with :func:`gramian_of`, asks the
        aggregator only for the ``T`` weights and writes ``w @ G`` with one ``mv`` into the flat buffer,
        whose views become the shared ``.grad`` (or one in-place ``addmv_`` when they already are, i.e.
        after ``zero_grad(set_to_none=False)`` or when gradients accumulate).
        """
        shared = self._shared_params()
        extra = self._extra_params()
        inputs = shared + extra
        n_shared = len(shared)
        T = weighted.shape[0]
        d = sum(p.numel() for p in shared)
        G, rows, flat, flat_views = self._param_views(T, d, weighted)
        for i in range(T):
            grads = torch.autograd.grad(weighted[i], inputs, retain_graph=i < T - 1, allow_unused=True)
            sg = grads[:n_shared]
            if any(g is None for g in sg):
                for view, g in zip(rows[i], sg):
                    if g is None:
                        view.zero_()
                    else:
                        view.copy_(g)
            else:
                torch._foreach_copy_(rows[i], list(sg))
            self._accumulate(extra, grads[n_shared:])
            del grads, sg
        agg = self.aggregator
        if isinstance(agg, GramianAggregator) and type(agg).forward is GramianAggregator.forward:
            w = agg.combination_weights(G, rng, losses=losses.detach() if self._agg_context else None,
                                        gramian=gramian_of(G))
            current = [p.grad for p in shared]
            if all(g is None for g in current):
                torch.mv(G.T, w, out=flat)
                for p, view in zip(shared, flat_views):
                    p.grad = view
                return
            if all(g is v for g, v in zip(current, flat_views)):
                flat.addmv_(G.T, w)
                return
            direction = w @ G
        else:
            direction = self._aggregate(G, losses, None, rng)
        offset = 0
        for p in shared:
            n = p.numel()
            g = direction[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
            offset += n

    def _backward_representation(self, weighted: Tensor, losses: Tensor, rng: np.random.Generator) -> None:
        rep, rep_d = self._rep, self._rep_d
        extra = self._extra_params()
        T = weighted.shape[0]
        G = self._buffer(T, rep_d.numel(), weighted)
        for i in range(T):
            grads = torch.autograd.grad(weighted[i], [rep_d, *extra], retain_graph=i < T - 1, allow_unused=True)
            if grads[0] is None:
                G[i].zero_()
            else:
                G[i].copy_(grads[0].reshape(-1))
            self._accumulate(extra, grads[1:])
        direction = self._aggregate(G, losses, rep_d.detach(), rng)
        rep.backward(direction.view_as(rep))

    def _last_layer_norms(self, losses: Tensor) -> Tensor:
        """``||grad_W L_i||`` at the last shared weight matrix ``W`` (GradNorm's W), one short backward each."""
        shared = self._shared_params()
        candidates = [p for p in shared if p.dim() >= 2] or shared
        if not candidates:
            raise SpecError("method", "gradnorm needs shared parameters")
        W = candidates[-1]
        norms = []
        for i in range(losses.shape[0]):
            (g,) = torch.autograd.grad(losses[i], W, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=losses.device, dtype=losses.dtype) if g is None else g.norm())
        return torch.stack(norms).detach()

    # -- validation stream (bilevel methods) ---------------------------------------------------
    def set_validation_batches(self, factory: Callable[[int], Iterator]) -> None:
        """``factory(epoch)`` returns an endless iterator of ``(inputs, targets)`` validation batches on the
        trial's device; restarted every epoch from a seed that depends on the epoch, so a resumed trial
        sees the same batches."""
        self._val_factory = factory
        self._val_iter = None

    def next_validation_batch(self) -> tuple[Any, Any]:
        if self._val_factory is None:
            raise SpecError("method", f"{self.weighting.name} needs validation batches; the trial loop "
                                      "must call set_validation_batches")
        if self._val_iter is None:
            self._val_iter = self._val_factory(self._val_epoch)
        return next(self._val_iter)

    # -- hooks --------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        if self.weighting is not None:
            self.weighting.on_epoch_end(epoch, mean_losses)
        self._val_epoch = epoch
        self._val_iter = None

    def extra_state_dict(self) -> dict:
        out: dict[str, Any] = {"val_epoch": self._val_epoch}
        for part in ("weighting", "aggregator"):
            mod = getattr(self, part)
            if mod is not None and hasattr(mod, "extra_state_dict"):
                out[part] = mod.extra_state_dict()
        return out

    def load_extra_state_dict(self, state: dict) -> None:
        self._val_epoch = int(state.get("val_epoch", 0))
        self._val_iter = None
        for part, s in state.items():
            if part not in ("weighting", "aggregator"):
                continue
            mod = getattr(self, part, None)
            if mod is not None and hasattr(mod, "load_extra_state_dict"):
                mod.load_extra_state_dict(s)


def check_combination(weighting: LossWeighting | None, aggregator: GradAggregator | None,
                      key: str = "method") -> None:
    """Reject, at spec load, combinations the engine cannot run faithfully."""
    if weighting is not None and aggregator is not None and not weighting.combinable:
        raise SpecError(key, f"{weighting.name} is a complete method with its own gradient step and "
                                  f"cannot be combined with the gradient method {aggregator.name}; "
                                  "use it alone")


def validation_batches(problem, data: Any, batch_size: int, seed: int, device: torch.device,
                       to_device: Callable[[Any, torch.device], Any]) -> Callable[[int], Iterator]:
    """A factory ``epoch -> endless iterator`` over shuffled validation batches (for bilevel methods).

    Uses its own generator seeded from ``(seed, epoch)`` so the training shuffle is unchanged.
    """
    if data.get("val") is None:
        raise SpecError("method", "this method needs a validation split, which the problem does not have")

    def factory(epoch: int) -> Iterator:
        gen = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch) + 17)
        while True:
            if problem.multi_input:
                iters = {t: iter(problem.batches(data["val"][t], batch_size, shuffle=True, generator=gen))
                         for t in problem.tasks}
                while True:
                    xs, ys = {}, {}
                    try:
                        for t in problem.tasks:
                            x, y = next(iters[t])
                            xs[t], ys[t] = x, (y[t] if isinstance(y, dict) else y)
                    except StopIteration:
                        break
                    yield to_device(xs, device), to_device(ys, device)
            else:
                for x, y in problem.batches(data["val"], batch_size, shuffle=True, generator=gen):
                    yield to_device(x, device), to_device(y, device)

    return factory
