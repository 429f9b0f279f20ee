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
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "HParam", "Rule", "GramianRule", "REGISTRY", "RuleUnavailable", "OnePass", "CHUNK",
    "agreement_mask", "gram_matrix", "one_pass", "combine_in_one_pass", "column_chunks",
    "pairwise_cosine", "check_finite_rows",
    "check_grads",
]


@dataclass(frozen=True)
class HParam:
    """One DomainBed hparam of a rule: key, default and random-search distribution.

    ``name`` is the key in DomainBed's hparams (prefixed by the rule, like DomainBed's
    ``irm_lambda``); ``arg`` the rule's constructor keyword; ``sample`` draws the random
    search value from a ``numpy.random.RandomState`` (DomainBed seeds one per hparam name);
    ``choices``, if given, are the only values the rule accepts.
    """

    name: str
    default: Any
    sample: Callable[[Any], Any]
    arg: str
    doc: str = ""
    choices: tuple = ()


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
        for arg, hp in known.items():
            if hp.choices and self.config[arg] not in hp.choices:
                raise ValueError(f"{self.name}: hparam {hp.name} must be one of "
                                 f"{list(hp.choices)}, got {self.config[arg]!r}")

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
        """The update for N >= 2 (inputs already checked): the reference implementation."""

    #: Whether the rule works column by column given the mask (:meth:`combine_chunk`, then
    #: :meth:`finish`), so that :func:`one_pass` applies it in its single pass over ``[N, P]``.
    elementwise: ClassVar[bool] = False

    def combine_chunk(self, grads: Tensor, conflicts: Tensor, out: Tensor) -> Optional[Tensor]:
        """Write the update of some columns into ``out`` (``conflicts``: where Eq. 2 fails);
        may return a statistic, summed over the chunks and handed to :meth:`finish`."""
        raise NotImplementedError(f"{self.name} is not elementwise")

    def finish(self, out: Tensor, partial: Optional[Tensor], n_agree: Tensor,
               generator: Optional[torch.Generator]) -> Tensor:
        """Complete the update after :meth:`combine_chunk` covered every column."""
        return out

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


#: Columns per chunk of the one-pass functions: 3 domain rows of 2^19 float32 (6 MB) stay
#: in cache while every quantity of the step is computed from them.
CHUNK = 1 << 19


def column_chunks(n_columns: int, chunk: int = CHUNK) -> list[slice]:
    """Consecutive column slices of at most ``chunk`` columns covering ``n_columns``."""
    return [slice(a, min(a + chunk, n_columns)) for a in range(0, n_columns, chunk)]


def _conflicts_into(grads: Tensor, out: Tensor, low: Tensor, high: Tensor,
                    scratch: Tensor) -> Tensor:
    """Not Eq. 2, into ``out``: some row is <= 0 (their minimum is) and some is >= 0 (their
    maximum is); i.e. the components are not all > 0 nor all < 0 (the authors' rule: a
    zero conflicts). ``low``/``high``/``scratch`` are buffers of ``out``'s length."""
    if len(grads) == 1:
        low.copy_(grads[0])
        high.copy_(grads[0])
    else:
        torch.minimum(grads[0], grads[1], out=low)
        torch.maximum(grads[0], grads[1], out=high)
    for row in grads[2:]:
        torch.minimum(low, row, out=low)
        torch.maximum(high, row, out=high)
    torch.le(low, 0, out=out)
    return out.logical_and_(torch.ge(high, 0, out=scratch))


def _buffers(width: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scratch space of the chunked functions: conflict mask, low, high, scratch mask."""
    return (torch.empty(width, dtype=torch.bool, device=like.device), like.new_empty(width),
            like.new_empty(width), torch.empty(width, dtype=torch.bool, device=like.device))


def agreement_mask(grads: Tensor) -> Tensor:
    """Eq. 2: ``bool[P]``, true where all N components are nonzero with one common sign.

    This is the authors' released rule (``|sum_i sgn(g_k^(i))| == N``): a component that
    is zero in some domain conflicts, including one that is zero in *every* domain (Eq. 2
    read literally would let ``sgn(0) = ... = sgn(0)`` agree). It matters for Agr-Rand,
    whose noise goes to every conflicting component and whose sigma averages over the
    agreeing ones, and for the logged agreement fraction; Agr-Sum's sum is 0 there anyway.
    """
    check_grads(grads)
    return _conflicts_into(grads, *_buffers(grads.shape[1], grads[0])).logical_not_()


def _dots(rows: Sequence[Tensor]) -> list[Tensor]:
    """``<rows[i], rows[j]>`` for ``i <= j`` (the upper triangle, row by row)."""
    return [torch.dot(rows[i], rows[j]) for i in range(len(rows)) for j in range(i, len(rows))]


def _gram_from(dots: list[Tensor], n: int, device) -> Tensor:
    """The ``[N, N]`` float64 Gram matrix from per-chunk upper-triangle dots, summed."""
    upper = torch.stack(dots).view(-1, n * (n + 1) // 2).double().sum(dim=0)
    gram = torch.zeros(n, n, dtype=torch.float64, device=device)
    i, j = torch.triu_indices(n, n, device=device)
    gram[i, j] = upper
    gram[j, i] = upper
    return gram


def gram_matrix(grads: Tensor, chunk: int = CHUNK) -> Tensor:
    """``[N, N]`` float64 inner products ``<g^(i), g^(j)>``, summed over column chunks.

    Each chunk's dot products are taken in the gradients' dtype and summed in float64;
    :func:`one_pass` computes the same dots in the same order, so both give the same
    matrix. Recomputed in float64 throughout if float32 overflows.
    """
    check_grads(grads)
    n = grads.shape[0]
    dots = [d for cols in column_chunks(grads.shape[1], chunk) for d in _dots(grads[:, cols])]
    return _widened_if_overflowed(_gram_from(dots, n, grads.device), grads, chunk)


def _widened_if_overflowed(gram: Tensor, grads: Tensor, chunk: int) -> Tensor:
    """``gram``, or its float64 recomputation when it overflowed while ``grads`` are finite."""
    if grads.dtype == torch.float64 or bool(torch.isfinite(gram).all()) \
            or not bool(torch.isfinite(grads).all()):
        return gram
    return gram_matrix(grads.double(), chunk)


@dataclass
class OnePass:
    """What :func:`one_pass` computes: the Gram matrix and the number of agreeing components."""

    gram: Tensor  # [N, N] float64
    n_agree: Tensor  # int64 scalar: components where Eq. 2 holds
    partial: Optional[Tensor] = None  # the elementwise rule's accumulated statistic


def one_pass(grads: Tensor, rule: Optional["Rule"] = None, out: Optional[Tensor] = None,
             chunk: int = CHUNK) -> OnePass:
    """The Gram matrix, the agreement count and, for an elementwise ``rule``, its result
    (into ``out``), in one pass over ``[N, P]``.

    The gradients are read chunk by chunk (:data:`CHUNK` columns), and every quantity is
    computed from a chunk while it is in cache: the memory-bound work of a step reads the
    ``[N, P]`` matrix once instead of once per quantity. A rule that is not elementwise
    gets only the Gram matrix and the count (it runs afterwards, e.g. ``weights @ grads``).
    """
    check_grads(grads)
    n, p = grads.shape
    elementwise = rule is not None and rule.elementwise
    if elementwise and out is None:
        out = grads.new_empty(p)
    conflicts, low, high, scratch = _buffers(min(chunk, p), grads[0])
    dots, n_conflicts, partials = [], [], []
    for cols in column_chunks(p, chunk):
        part = grads[:, cols]
        k = part.shape[1]
        dots += _dots(part)
        c = _conflicts_into(part, conflicts[:k], low[:k], high[:k], scratch[:k])
        n_conflicts.append(c.count_nonzero())
        if elementwise:
            partial = rule.combine_chunk(part, c, out[cols])
            if partial is not None:
                partials.append(partial)
    n_agree = p - torch.stack(n_conflicts).sum()
    gram = _widened_if_overflowed(_gram_from(dots, n, grads.device), grads, chunk)
    return OnePass(gram, n_agree, torch.stack(partials).sum() if partials else None)


def combine_in_one_pass(rule: "Rule", grads: Tensor, generator: Optional[torch.Generator] = None,
                        out: Optional[Tensor] = None) -> tuple[Tensor, OnePass]:
    """``rule``'s update of ``grads`` the fast way, and the :class:`OnePass` it came with.

    An elementwise rule is applied inside :func:`one_pass`, then :meth:`Rule.finish`
    completes it (Agr-Rand's noise); any other rule runs after the pass with its Gram
    matrix (for a Gramian rule, one ``weights @ grads`` product). Same result as calling
    the rule (bitwise for Agr-Sum and the Gramian rules; Agr-Rand draws its noise for the
    conflicting components only, so its noise differs but not its distribution).
    """
    fused = rule.elementwise and grads.shape[0] > 1  # (N = 1: the call returns the gradient)
    if fused:
        out = grads.new_empty(grads.shape[1]) if out is None else out
    passed = one_pass(grads, rule if fused else None, out=out)
    check_finite_rows(passed.gram, grads)
    if fused:
        return rule.finish(out, passed.partial, passed.n_agree, generator), passed
    return rule(grads, generator, gram=passed.gram, out=out), passed


def check_finite_rows(gram: Tensor, grads: Tensor) -> None:
    """Raise ``FloatingPointError`` naming the rows of ``grads`` that are not finite.

    A row is finite iff its squared norm, on the Gram diagonal, is (:func:`gram_matrix`
    has already recomputed a float32 overflow in float64), so the rows are read only then.
    """
    if bool(torch.isfinite(gram.diagonal()).all()):
        return
    finite = torch.isfinite(grads).all(dim=1).tolist()
    bad = [i for i, ok in enumerate(finite) if not ok]
    raise FloatingPointError(
        f"non-finite gradient in training domain(s) {bad} (position among this step's "
        f"{len(finite)} training minibatches); no update was applied")


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
