"""The architecture interface every trainer and gradient method relies on.

An architecture wraps an encoder factory and per-task decoders given by a problem and exposes:

* ``forward(x) -> {task: output}``; ``x`` is a tensor (single-input problems) or ``{task: tensor}``
  (multi-input problems: each task's batch goes through the shared part, then its own decoder);
* ``encode(x)`` / ``decode(rep)`` split at the shared representation where one exists
  (``has_shared_representation``), so gradient methods can work on gradients at the representation;
* ``shared_parameters()`` and ``task_parameters()``, a complete and disjoint partition of ``parameters()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

Inputs = Tensor | dict[str, Tensor]
Rep = Tensor | dict[str, Tensor]


class MTLArchitecture(nn.Module):
    name: ClassVar[str]
    #: whether encode/decode split at one shared representation (needed for representation-level methods)
    has_shared_representation: ClassVar[bool] = True
    #: encoder kinds this architecture can wrap (None: any encoder); checked at spec load
    encoder_kinds: ClassVar[tuple[str, ...] | None] = None

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

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Architecture hyperparameters with their defaults (for `litmus methods`)."""
        import inspect

        sig = inspect.signature(cls.__init__)
        skip = {"self", "encoder_factory", "decoders", "tasks", "multi_input"}
        return {n: p.default for n, p in sig.parameters.items() if n not in skip and p.default is not p.empty}
