"""What a rule is: it maps ``[N domains, P parameters]`` gradients to one ``[P]`` update.

Three kinds, one base each, so that the step knows what to hand a rule without flags:

* :class:`Rule` - reads the gradients only (e.g. TorchJD's coordinate-wise aggregators);
* :class:`ElementwiseRule` - works column by column given the Eq. 2 agreement mask
  (Agr-Sum, Agr-Rand), so the step's single pass over ``[N, P]`` applies it;
* :class:`GramianRule` - its update is ``weights @ grads`` with weights from the ``[N, N]``
  Gram matrix the step computes anyway (PCGrad, most of TorchJD's).

A rule declares its parameters as :class:`Param` (constructor keyword, default,
random-search draw); DomainBed's hparam keys are derived from them by the glue. Rules are
pure tensor math: randomness only from the ``generator`` argument.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from . import compiled, registry
from .kernels import agreement_mask, check_grads, gram_matrix

__all__ = ["Param", "RuleUnavailable", "Rule", "ElementwiseRule", "GramianRule"]


@dataclass(frozen=True)
class Param:
    """One parameter of a rule: its constructor keyword, default and random-search draw.

    ``sample`` draws a value from a ``numpy.random.RandomState`` (DomainBed seeds one per
    hparam name); ``choices``, if given, are the only values the rule accepts.
    """

    arg: str
    default: Any
    sample: Callable[[Any], Any]
    doc: str = ""
    choices: tuple = ()


def fixed(arg: str, default: Any, doc: str = "", choices: tuple = ()) -> Param:
    """A parameter that the random search leaves at its default."""
    return Param(arg, default, lambda r, d=default: d, doc, choices)


class RuleUnavailable(ImportError):
    """A registered rule whose optional dependencies are not installed."""


class Rule(ABC):
    """Combines ``[N, P]`` domain gradients into one ``[P]`` update.

    Subclasses set :attr:`name` (which registers them) and implement :meth:`combine`.
    Calling the rule checks the input once, returns the plain gradient when N = 1
    (nothing to combine) and hands :meth:`combine` what its kind reads.
    """

    #: DomainBed algorithm name; an empty name marks an abstract base (not registered).
    name: ClassVar[str] = ""
    #: One line for listings: what the rule does.
    summary: ClassVar[str] = ""
    #: The rule's parameters (constructor keywords).
    params: ClassVar[tuple[Param, ...]] = ()
    #: The scale the method was published at: "sum" or "mean" of the N domain gradients.
    native_scale: ClassVar[str] = "sum"
    #: Fewest domains the rule is defined for (beyond N = 1, which is always the gradient).
    min_domains: ClassVar[int] = 2
    #: Position in listings (the paper's rules first); ties keep registration order.
    rank: ClassVar[int] = 100
    #: Modules that must be importable for the rule to run (optional dependencies).
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.native_scale not in ("sum", "mean"):
                raise ValueError(f"{cls.__name__}.native_scale must be 'sum' or 'mean'")
            registry.add(cls)

    def __init__(self, **kwargs: Any) -> None:
        known = {p.arg: p for p in self.params}
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown argument(s) {unknown}; "
                            f"it takes {sorted(known)}")
        self.config = {arg: kwargs.get(arg, p.default) for arg, p in known.items()}
        for arg, p in known.items():
            if p.choices and self.config[arg] not in p.choices:
                raise ValueError(f"{self.name}: {arg} must be one of {list(p.choices)}, "
                                 f"got {self.config[arg]!r}")

    @classmethod
    def available(cls) -> bool:
        """Whether the optional dependencies in :attr:`requires` are importable."""
        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    @classmethod
    def check_available(cls) -> None:
        if not cls.available():
            missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
            raise RuleUnavailable(f"{cls.name} needs {', '.join(missing)}, which is not "
                                  f"installed: {cls.install_hint}")

    def __call__(self, grads: Tensor, generator: Optional[torch.Generator] = None, *,
                 gram: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                 out: Optional[Tensor] = None) -> Tensor:
        """The combined ``[P]`` update of ``grads`` (written into ``out`` if given)."""
        check_grads(grads)
        wanted = self.generator_device(grads)
        if generator is not None and generator.device.type != wanted.type:
            raise ValueError(f"{self.name} draws on {wanted.type} but the generator is on "
                             f"{generator.device}; pass a generator on {wanted.type}")
        n = grads.shape[0]
        if n == 1:  # one domain: nothing to combine
            return grads[0].clone() if out is None else out.copy_(grads[0])
        if n < self.min_domains:
            raise ValueError(f"{self.name} needs at least {self.min_domains} domains, got {n}")
        gram, mask = self.prepare(grads, gram, mask)
        return self.combine(grads, gram=gram, mask=mask, generator=generator, out=out)

    def prepare(self, grads: Tensor, gram: Optional[Tensor], mask: Optional[Tensor]
                ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """What :meth:`combine` reads besides ``grads``, computed if the caller gave none."""
        return gram, mask

    def generator_device(self, grads: Tensor) -> torch.device:
        """The device the ``generator`` passed with ``grads`` must be on."""
        return grads.device

    @abstractmethod
    def combine(self, grads: Tensor, *, gram: Optional[Tensor], mask: Optional[Tensor],
                generator: Optional[torch.Generator], out: Optional[Tensor]) -> Tensor:
        """The update for N >= 2 (inputs already checked): the reference implementation."""

    def reset(self) -> None:
        """Forget any state kept across steps (stateful rules override it)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class ElementwiseRule(Rule):
    """A rule that works column by column given the Eq. 2 agreement mask.

    :meth:`combine` is the reference; :meth:`combine_chunk` and :meth:`finish` let the
    step's single pass over ``[N, P]`` (:func:`~.fused.one_pass`) apply it chunk by chunk.
    """

    def prepare(self, grads, gram, mask):
        mask = agreement_mask(grads) if mask is None else mask
        if mask.dtype != torch.bool or mask.shape != grads.shape[1:]:
            raise ValueError(f"mask must be bool[{grads.shape[1]}] from agreement_mask(grads), "
                             f"got {mask.dtype}{list(mask.shape)}")
        return gram, mask

    @abstractmethod
    def combine_chunk(self, grads: Tensor, conflicts: Tensor, out: Tensor) -> Optional[Tensor]:
        """Write the update of some columns into ``out`` (``conflicts``: where Eq. 2 fails);
        may return a statistic, summed over the chunks and handed to :meth:`finish`."""

    def fuses(self, grads: Tensor, out: Tensor) -> bool:
        """Whether :meth:`combine_fused` applies to these tensors (default: never)."""
        return False

    def combine_fused(self, grads: Tensor, out: Tensor,
                      gram: bool = False) -> tuple[Optional[Tensor], "compiled.AgreeingSum"]:
        """:meth:`combine_chunk` over all columns without a conflict mask, in one read of
        ``grads`` (a compiled kernel), where :meth:`fuses`; returns (the statistic over all
        columns, what the read counted: conflicts, squared norms and, with ``gram``, the
        Gram matrix)."""
        raise NotImplementedError(f"{self.name} has no fused kernel")

    def finish(self, out: Tensor, partial: Optional[Tensor],
               generator: Optional[torch.Generator]) -> Tensor:
        """Complete the update after :meth:`combine_chunk` covered every column
        (``partial``: the sum of its statistics)."""
        return out


class GramianRule(Rule):
    """A rule whose update is ``weights @ grads`` with weights from the ``[N, N]`` Gram matrix.

    The caller's Gram matrix is reused, so the gradients are read once more only for the
    final ``[N] @ [N, P]`` product. The weights come from the small Gram matrix, on the
    CPU: so do the rule's random draws.
    """

    def prepare(self, grads, gram, mask):
        n = grads.shape[0]
        gram = gram_matrix(grads) if gram is None else gram
        if gram.shape != (n, n):
            raise ValueError(f"gram must be [{n}, {n}], got {list(gram.shape)}")
        return gram, mask

    def generator_device(self, grads: Tensor) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def weights(self, gram: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """``[N]`` coefficients of the domain gradients."""

    def combine(self, grads, *, gram, mask, generator, out):
        weights = self.weights(gram, generator).to(device=grads.device, dtype=grads.dtype)
        return torch.mv(grads.T, weights, out=out)
