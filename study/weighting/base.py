"""Interfaces of weighting methods.

Two kinds, each testable without a model:

* :class:`LossWeighting` maps the loss vector ``(T,)`` (and its own state) to weights ``(T,)``;
  the trainer minimises ``sum_i w_i L_i + regularizer()`` with one backward pass.
* :class:`GradAggregator` maps per-task gradients ``G`` (``T x d``) to one update direction ``(d,)``;
  the trainer owns autograd (it computes ``G`` at the shared parameters or at the shared representation)
  and writes the direction back into ``.grad``. Most aggregators only need the ``T x T`` Gramian
  ``G G^T``: they subclass :class:`GramianAggregator` and implement ``weights(gramian) -> (T,)``; the
  direction is then one final combination ``w @ G`` on the device.

A method in a study is a loss weighting, an aggregator, or both (e.g. RLW + CAGrad: random loss weights
scale the task losses, then the aggregator combines the scaled task gradients).

Randomness: methods that sample draw from the ``numpy.random.Generator`` the trainer passes in,
seeded from the trial's seed, so a trial is reproducible; results are moved to the loss device.

Non-finite policy (one for every method, see :mod:`study.weighting.step`): a method never repairs a
non-finite loss or gradient (no ``nan_to_num``, no skipping). Methods whose math runs on the host read a
copy of the Gramian or losses anyway and raise :class:`NonFiniteError` when it is not finite; methods that
stay on the device let the NaN/inf flow into the update, where the trial loop's loss check finds it.
Either way the trial ends with status ``diverged``.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

LEVELS = ("parameters", "representation")


class NonFiniteError(ArithmeticError):
    """A method met a non-finite loss or gradient; the trial loop turns it into ``DivergedError``."""

    def __init__(self, what: str = "gradient", method: str = ""):
        self.what = what
        self.method = method
        super().__init__(f"non-finite {what}" + (f" in {method}" if method else ""))


class LossWeighting(nn.Module):
    """Base class: ``forward(losses, rng) -> weights``.

    Subclasses set ``name`` through the registry and document the paper and equation they implement.
    Learnable weightings (UW) hold ``nn.Parameter``s; the trainer adds them to the optimizer. Weightings
    with their own inner optimizer (FAMO, MOML) keep their variables as buffers instead.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "loss"
    #: set when the method needs the per-task gradients (GradNorm): the trainer then calls
    #: ``forward(losses, rng, grads=...)`` with the gradient norms of each task at the last shared layer
    needs_gradients: ClassVar[bool] = False
    #: set when the method needs the task losses recomputed on the same batch after the optimizer step
    #: (FAMO): the trainer calls ``after_step(new_losses)``
    needs_post_step_losses: ClassVar[bool] = False
    #: set by bilevel methods (MOML): the trainer hands them a validation batch inside the step through
    #: ``meta_step(engine, losses, rng)``
    needs_validation: ClassVar[bool] = False
    #: whether the method can be combined with a gradient aggregator (checked when the spec is loaded)
    combinable: ClassVar[bool] = True

    def __init__(self, num_tasks: int):
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularizer(self) -> Tensor | float:
        """Extra term added to the objective (e.g. UW's log-variance penalty)."""
        return 0.0

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Called with the epoch's mean training loss per task (DWA uses it)."""

    def after_step(self, new_losses: Tensor) -> None:
        """Called after the optimizer step with the losses of the same batch (``needs_post_step_losses``)."""

    def extra_state_dict(self) -> dict:
        """Non-parameter state to checkpoint (loss histories...)."""
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass


class GradAggregator(nn.Module):
    """Base class: ``forward(G, rng, *, losses=None, rep=None) -> direction`` with ``G`` of shape ``(T, d)``.

    ``losses`` are the (unweighted, detached) task losses of the step, for methods that use them
    (DB-MTL's log transform, MoCo's normalisation); ``rep`` is the shared representation when ``G`` holds
    gradients at it (GradDrop uses its sign and batch layout). A user aggregator may implement the short
    form ``forward(G, rng)``.

    ``level`` says where the trainer computes ``G``: ``parameters`` (the shared parameters) or
    ``representation`` (the shared features: one encoder backward plus T cheap head backwards). Each class
    lists the levels it defines in ``levels``; the constructor argument ``level`` selects one from the spec.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "gradient"
    #: levels this method is defined at; the first is the default
    levels: ClassVar[tuple[str, ...]] = LEVELS
    #: whether the direction depends on the rng (PCGrad's order, GradDrop's mask, RGW's weights)
    stochastic: ClassVar[bool] = False

    def __init__(self, num_tasks: int, level: str | None = None):
        super().__init__()
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks
        if level is None:
            level = type(self).levels[0]
        if level not in type(self).levels:
            raise ValueError(f"level must be one of {', '.join(type(self).levels)}, got {level!r}")
        self.level = level

    def forward(self, grads: Tensor, rng: np.random.Generator, *, losses: Tensor | None = None,
                rep: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state_dict(self) -> dict:
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass

    def _check_shape(self, grads: Tensor) -> Tensor:
        if grads.dim() != 2:
            grads = grads.reshape(grads.shape[0], -1)
        if grads.shape[0] != self.num_tasks:
            raise ValueError(f"{self.name}: expected {self.num_tasks} task gradients, got {grads.shape[0]}")
        return grads


class GramianAggregator(GradAggregator):
    """An aggregator whose direction is ``w @ G`` with ``w`` a function of the Gramian ``G G^T`` only.

    The Gramian (``T x T``) is formed on the device, copied once to the host in float64 for the small
    solve, and checked for finiteness there (no extra sync); ``weights`` returns the ``T`` coefficients;
    the only ``O(T d)`` work besides the Gramian is the final combination.
    """

    def weights(self, gramian: np.ndarray, rng: np.random.Generator,
                losses: np.ndarray | None = None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def combination_weights(self, grads: Tensor, rng: np.random.Generator, *, losses: Tensor | None = None,
                            gramian: Tensor | None = None) -> Tensor:
        """The ``T`` weights of the final combination ``w @ G``, on the device of ``grads``.

        ``gramian`` (``G G^T``, already formed) saves recomputing it; the trainer uses this to write the
        combination straight into the parameters' ``.grad`` (see :mod:`study.weighting.step`).
        """
        grads = self._check_shape(grads)
        if gramian is None:
            gramian = gramian_of(grads)
        host = gramian.detach().to("cpu", torch.float64).numpy()
        loss_host = None
        if losses is not None:
            loss_host = losses.detach().to("cpu", torch.float64).numpy()
            if not np.isfinite(loss_host).all():
                raise NonFiniteError("loss", self.name)
        if not np.isfinite(host).all():
            raise NonFiniteError("gradient", self.name)
        w = self.weights(host, rng, loss_host)
        self.last_weights = w
        return torch.as_tensor(w, dtype=grads.dtype).to(grads.device, non_blocking=True)

    def forward(self, grads: Tensor, rng: np.random.Generator, *, losses: Tensor | None = None,
                rep: Tensor | None = None) -> Tensor:
        grads = self._check_shape(grads)
        return self.combination_weights(grads, rng, losses=losses) @ grads


#: columns per block of :func:`gramian_of` on the CPU
GRAM_BLOCK = 4096


def gramian_of(grads: Tensor) -> Tensor:
    """``G G^T`` of a ``T x d`` matrix.

    On the CPU, with ``d`` in the millions, one ``G @ G.T`` runs far below the memory bandwidth (BLAS
    handles ``K >> M = N`` poorly); the same product as one batched product over blocks of
    ``GRAM_BLOCK`` columns, summed, measured 2-3.5x faster on ResNet-18's 11.2 M shared parameters
    (T = 3 and 10). The result differs from ``G @ G.T`` only by float rounding (summation order).
    Other devices and small or non-contiguous matrices use the plain product.
    """
    T, d = grads.shape
    if grads.device.type != "cpu" or d < 4 * GRAM_BLOCK or grads.stride(1) != 1:
        return grads @ grads.T
    nb = d // GRAM_BLOCK
    n = nb * GRAM_BLOCK
    blocks = grads[:, :n].view(T, nb, GRAM_BLOCK).transpose(0, 1)
    out = torch.bmm(blocks, blocks.transpose(1, 2)).sum(0)
    if n < d:
        rest = grads[:, n:]
        out.addmm_(rest, rest.T)
    return out


def as_weights(sample: np.ndarray, like: Tensor) -> Tensor:
    """A numpy weight vector as a tensor on the loss device and dtype."""
    return torch.as_tensor(sample, dtype=like.dtype).to(like.device, non_blocking=True)


def forward_accepts_context(aggregator: GradAggregator) -> bool:
    """Whether ``aggregator.forward`` takes the ``losses``/``rep`` keywords (user classes may not)."""
    try:
        params = inspect.signature(aggregator.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return "losses" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Validate a numeric hyperparameter; raise ``ValueError("<name> must be ..., got ...")``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return v


def check_int(name: str, value, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
