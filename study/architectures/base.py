"""The architecture interface every trainer and gradient method relies on.

An architecture wraps an encoder factory and per-task decoders given by a problem and exposes:

* ``forward(x) -> {task: output}``; ``x`` is a tensor (single-input problems) or ``{task: tensor}``
  (multi-input problems: each task's batch goes through the shared part, then its own decoder; a dict
  with a subset of the tasks returns only those tasks' outputs);
* ``encode(x)`` / ``decode(rep)`` split at the representation the decoders read: one tensor (single
  input) or ``{task: tensor}`` (multi-input, or architectures whose decoders each read their own tensor);
* ``has_shared_representation``: True only when that split point is a *shared representation*, i.e. each
  decoder reads a tensor computed from shared parameters only (HPS). Representation-level gradient methods
  (gradients taken at the representation instead of at the shared parameters) need it;
* ``shared_parameters()`` and ``task_parameters()``, a complete and disjoint partition of ``parameters()``.
  ``task_parameters()[t]`` holds exactly the parameters that only task ``t``'s output depends on (its
  decoder, and for instance its attention modules in MTAN or its gate in MMoE); everything that two or more
  tasks' outputs depend on is shared. Parameter-level gradient methods aggregate the per-task gradients of
  ``shared_parameters()``; a task parameter simply receives its own task's gradient.

Applicability (checked by the spec loader before any model is built): :meth:`MTLArchitecture.applicable`
returns ``None`` or the reason the architecture does not apply to a problem, from the problem's
``encoder_kind`` and, for architectures that size modules from the input, its ``input_shape``.
Constructors raise ``ValueError("<architecture>: ...")`` for what can only be seen on the built encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

Inputs = Tensor | dict[str, Tensor]
Rep = Tensor | dict[str, Tensor]


class EncoderFactory:
    """A problem's encoder factory, plus what architectures may need to know before building encoders.

    Calling it builds a fresh encoder (``problem.build_encoder()``). ``kind`` is the problem's
    ``encoder_kind``; ``input_shape`` the per-sample input shape (e.g. ``(3, 288, 384)``) when the problem
    declares one, used to size gates (MMoE family) and to probe stage shapes (MTAN). Any callable returning
    an encoder is accepted where a factory is expected; these attributes are then looked up on the encoder.
    """

    def __init__(self, build: Callable[[], nn.Module], kind: str | None = None,
                 input_shape: tuple[int, ...] | None = None):
        self.build = build
        self.kind = kind
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None

    def __call__(self) -> nn.Module:
        return self.build()

    def __repr__(self) -> str:
        return f"EncoderFactory(kind={self.kind!r}, input_shape={self.input_shape!r})"


class MTLArchitecture(nn.Module):
    name: ClassVar[str]
    #: whether encode/decode split at one shared representation (needed for representation-level methods)
    has_shared_representation: ClassVar[bool] = True
    #: encoder kinds this architecture can wrap (None: any encoder); checked at spec load
    encoder_kinds: ClassVar[tuple[str, ...] | None] = None
    #: why an encoder kind outside ``encoder_kinds`` does not work (completes "it ...")
    encoder_requirement: ClassVar[str] = "needs another kind of encoder"
    #: whether the architecture sizes modules from the problem's per-sample ``input_shape``
    needs_input_shape: ClassVar[bool] = False

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool):
        super().__init__()
        self.tasks = tuple(tasks)
        self.multi_input = multi_input
        self.decoders = nn.ModuleDict(decoders)

    # Subclasses implement encode/decode (or override forward when has_shared_representation is False).
    def encode(self, x: Inputs) -> Rep:
        raise NotImplementedError

    def decode(self, rep: Rep) -> dict[str, Tensor]:
        if isinstance(rep, dict):
            return {t: self.decoders[t](rep[t]) for t in self.tasks if t in rep}
        return {t: self.decoders[t](rep) for t in self.tasks}

    def forward(self, x: Inputs) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(self.decoders[t].parameters()) for t in self.tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        task_ids = {id(p) for ps in self.task_parameters().values() for p in ps}
        return [p for p in self.parameters() if id(p) not in task_ids]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each training epoch (0-based ``epoch`` of ``epochs``).

        Most architectures ignore it; LTB anneals its Gumbel-softmax temperature with it.
        """

    @classmethod
    def applicable(cls, problem: Any) -> str | None:
        """``None`` if this architecture can be built for ``problem``, else the reason (one line).

        Checks only what the problem declares (``encoder_kind``, ``input_shape``), without building anything.
        """
        kind = getattr(problem, "encoder_kind", None)
        if cls.encoder_kinds is not None and kind not in cls.encoder_kinds:
            return (f"it {cls.encoder_requirement} (encoder kinds {', '.join(cls.encoder_kinds)}); "
                    f"the problem's encoder is of kind {kind!r}")
        if cls.needs_input_shape and getattr(problem, "input_shape", None) is None:
            return (f"it sizes its modules from the per-sample input shape, which the problem does not "
                    f"declare (set an `input_shape` attribute on the problem, e.g. (3, 224, 224))")
        return None

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Architecture hyperparameters with their defaults (for `litmus methods`)."""
        import inspect

        sig = inspect.signature(cls.__init__)
        skip = {"self", "encoder_factory", "decoders", "tasks", "multi_input"}
        return {n: p.default for n, p in sig.parameters.items() if n not in skip and p.default is not p.empty}
