"""The rule interface, its registry, and the math every rule shares.

A rule maps the stacked domain gradients ``grads`` of shape ``[N domains, P parameters]``
(one flattened loss gradient per source domain) to one update direction of shape
``[P]``. Rules are pure tensor math: nothing here knows about models, optimizers or
DomainBed. Randomness only comes from the ``generator`` argument, so results are
reproducible under a seed.

A :class:`Rule` subclass with a ``name`` registers itself in :data:`REGISTRY` when its
module is imported; :mod:`domainbed_surgery.rules` imports every module of the package,
so adding a rule is one module (plus its test). The rule declares what it needs from the
caller (the Eq. 2 agreement mask, the Gram matrix), its hparams (defaults, random-search
distributions), the scale it was published at, and may keep state across steps.
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch
from torch import Tensor

__all__ = [
    "HParam", "Rule", "GramianRule", "REGISTRY", "RuleUnavailable",
    "agreement_mask", "gram_matrix", "pairwise_cosine", "check_grads",
]


@dataclass(frozen=True)
class HParam:
    """One DomainBed hparam of a rule: key, default and random-search distribution.

    ``name`` is the key in DomainBed's hparams (prefixed by the rule, like DomainBed's
    ``irm_lambda``); ``arg`` the rule's constructor keyword; ``sample`` draws the random
    search value from a ``numpy.random.RandomState`` (DomainBed seeds one per hparam name).
    """

    name: str
    default: Any
    sample: Callable[[Any], Any]
    arg: str
    doc: str = ""


class RuleUnavailable(ImportError):
    """A registered rule whose optional dependencies are not installed."""


#: Rule name (= DomainBed algorithm name) -> rule class, in registration order.
REGISTRY: dict[str, type["Rule"]] = {}


class Rule(ABC):
    """Combines ``[N, P]`` domain gradients into one ``[P]`` update.

    Subclasses set :attr:`name` (which registers them) and implement :meth:`combine`.
    Calling the rule checks the input once, returns the plain gradient when N = 1
    (nothing to combine) and computes the mask or Gram matrix the rule needs if the
    caller did not pass them.
    """

    #: DomainBed algorithm name; an empty name marks an abstract base (not registered).
    name: ClassVar[str] = ""
    #: One line for listings: what the rule does.
    summary: ClassVar[str] = ""
    #: What :meth:`combine` reads besides ``grads``.
    needs_mask: ClassVar[bool] = False
    needs_gram: ClassVar[bool] = False
    #: The hparams this rule adds (DomainBed keys -> constructor keywords).
    hparams: ClassVar[tuple[HParam, ...]] = ()
    #: The scale the method was published at: "sum" or "mean" of the N domain gradients.
    native_scale: ClassVar[str] = "sum"
    #: Properties the property tests check: rule(c * G) = c * rule(G) for c > 0; random draws.
    homogeneous: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
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
            if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
                raise ValueError(f"two rules named {cls.name!r}: {REGISTRY[cls.name]} and {cls}")
            if cls.native_scale not in ("sum", "mean"):
                raise ValueError(f"{cls.__name__}.native_scale must be 'sum' or 'mean'")
            REGISTRY[cls.name] = cls

    def __init__(self, **kwargs: Any) -> None:
        known = {hp.arg: hp for hp in self.hparams}
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown argument(s) {unknown}; "
                            f"it takes {sorted(known)}")
        self.config = {arg: kwargs.get(arg, hp.default) for arg, hp in known.items()}

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "Rule":
        """The rule configured from DomainBed hparams (missing keys take their default)."""
        cls.check_available()
        return cls(**{hp.arg: hparams.get(hp.name, hp.default) for hp in cls.hparams})

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
        if self.needs_mask:
            mask = agreement_mask(grads) if mask is None else mask
            if mask.dtype != torch.bool or mask.shape != grads.shape[1:]:
                raise ValueError(f"mask must be bool[{grads.shape[1]}] from agreement_mask(grads), "
                                 f"got {mask.dtype}{list(mask.shape)}")
        if self.needs_gram:
            gram = gram_matrix(grads) if gram is None else gram
            if gram.shape != (n, n):
                raise ValueError(f"gram must be [{n}, {n}], got {list(gram.shape)}")
        return self.combine(grads, gram=gram, mask=mask, generator=generator, out=out)

    #: Where the rule's random draws happen: "grads" (their device) or "cpu" (small draws).
    draws_on: ClassVar[str] = "grads"

    def generator_device(self, grads: Tensor) -> torch.device:
        """The device the ``generator`` passed with ``grads`` must be on."""
        return torch.device("cpu") if self.draws_on == "cpu" else grads.device

    @abstractmethod
    def combine(self, grads: Tensor, *, gram: Optional[Tensor], mask: Optional[Tensor],
                generator: Optional[torch.Generator], out: Optional[Tensor]) -> Tensor:
        """The update for N >= 2 (inputs already checked)."""

    def reset(self) -> None:
        """Forget any state kept across steps (stateful rules override it)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class GramianRule(Rule):
    """A rule whose update is ``weights @ grads`` with weights from the ``[N, N]`` Gram matrix.

    The caller's Gram matrix is reused, so the gradients are read once more only for the
    final ``[N] @ [N, P]`` product.
    """

    needs_gram = True
    draws_on = "cpu"  # weights come from the small Gram matrix, computed on the CPU

    @abstractmethod
    def weights(self, gram: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """``[N]`` coefficients of the domain gradients."""

    def combine(self, grads, *, gram, mask, generator, out):
        weights = self.weights(gram, generator).to(device=grads.device, dtype=grads.dtype)
        return torch.mv(grads.T, weights, out=out)


# -- shared math -------------------------------------------------------------------------
def check_grads(grads: Tensor) -> None:
    """Raise unless ``grads`` is a floating-point ``[N >= 1, P]`` tensor."""
    if not isinstance(grads, Tensor):
        raise TypeError(f"grads must be a torch.Tensor, got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(
            f"grads must have shape [N domains, P parameters], got {tuple(grads.shape)}")
    if grads.shape[0] == 0:
        raise ValueError("grads must hold at least one domain gradient (N >= 1)")
    if not grads.is_floating_point():
        raise TypeError(f"grads must be floating point, got {grads.dtype}")


def _all_rows(grads: Tensor, compare) -> Tensor:
    """``bool[P]``: ``compare(row)`` holds in every row (row-wise, no ``[N, P]`` temporaries)."""
    result = compare(grads[0])
    for row in grads[1:]:
        result &= compare(row)
    return result


def agreement_mask(grads: Tensor) -> Tensor:
    """Eq. 2: ``bool[P]``, true where all N components are nonzero with one common sign.

    This is the authors' released rule (``|sum_i sgn(g_k^(i))| == N``): a component that
    is zero in some domain conflicts, including one that is zero in *every* domain (Eq. 2
    read literally would let ``sgn(0) = ... = sgn(0)`` agree). It matters for Agr-Rand,
    whose noise goes to every conflicting component and whose sigma averages over the
    agreeing ones, and for the logged agreement fraction; Agr-Sum's sum is 0 there anyway.
    """
    check_grads(grads)
    return _all_rows(grads, lambda r: r > 0) | _all_rows(grads, lambda r: r < 0)


def gram_matrix(grads: Tensor) -> Tensor:
    """``[N, N]`` inner products ``<g^(i), g^(j)>`` (one matmul; float64 if float32 overflows)."""
    check_grads(grads)
    gram = grads @ grads.T
    if not bool(torch.isfinite(gram).all()) and bool(torch.isfinite(grads).all()):
        wide = grads.to(torch.float64)
        gram = wide @ wide.T
    return gram


def pairwise_cosine(gram: Tensor) -> Tensor:
    """Mean cosine similarity over domain pairs ``i < j``, from a Gram matrix.

    Pairs with a zero-norm gradient have no defined cosine and are left out; the
    result is NaN when no pair is defined (including N = 1).
    """
    n = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    i, j = torch.triu_indices(n, n, offset=1, device=gram.device)
    denom = norms[i] * norms[j]
    defined = denom > 0
    cos = gram[i, j][defined] / denom[defined]
    if cos.numel() == 0:
        return torch.tensor(math.nan, dtype=gram.dtype, device=gram.device)
    return cos.mean()
