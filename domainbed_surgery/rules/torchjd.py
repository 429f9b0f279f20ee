"""TorchJD's aggregators (``torchjd.aggregation``, 0.18) as rules, under their TorchJD names.

Optional: ``pip install 'domainbed-surgery[torchjd]'`` (TorchJD and the solvers its
aggregators need). Without it these rules stay registered but unavailable, and asking
for one says how to install it. TorchJD is imported when a rule is first used.

How each aggregator is called, so that the ``[N, P]`` gradients are read only once more,
for one ``[N] @ [N, P]`` product:

* :class:`TorchJDGramianRule`: the aggregator's Gramian weighting is applied to the
  caller's Gram matrix;
* :class:`TorchJDSurrogateRule`: the aggregator depends on the gradients only through their inner
  products (it is equivariant under rotations of parameter space), so it runs on an
  ``[N, N]`` square root ``R`` of the Gram matrix (``R R^T = G``) and its result
  ``R^T c`` is mapped back to ``grads^T c``;
* :class:`TorchJDMatrixRule`: coordinate-wise aggregators (GradDrop, TrimmedMean,
  ExcessMTL) get ``[N, P]``.

TorchJD draws its randomness (GradVac's orders, GradDrop's thresholds) from torch's
global generator; here that generator is forked and seeded from the rule's own
``generator`` for the call, so results are reproducible and DomainBed's own random
stream is untouched. Weightings whose weights do not depend on the gradients' scale get
the Gram matrix divided by its largest diagonal entry, which keeps their solvers in range.

Not wrapped: ``PCGrad`` (ours, :mod:`.pcgrad`; TorchJD's is its test oracle); ``Mean``,
``Sum``, ``Random``, ``Constant`` (no conflict handling); ``PCD`` (treats the first row as
the primary objective, while domains have no order); ``Krum`` (with 3 domains the two
closest gradients tie and the first one by index wins, so the update depends on the
order of the domains); ``MoDoWeighting`` and
``SDMGradWeighting`` (they need products of two independent batches' Jacobians) and
``CRMOGMWeighting`` (a modifier of another weighting).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from .interface import GramianRule, Param, Rule, fixed

INSTALL_HINT = "pip install 'domainbed-surgery[torchjd]' (TorchJD 0.18 with its solvers)"


@contextlib.contextmanager
def seeded_global_rng(generator: Optional[torch.Generator], device: torch.device) -> Iterator[None]:
    """torch's global RNG (CPU and ``device``) forked and seeded from ``generator``."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class GramRoot(NamedTuple):
    """An ``[N, N]`` square root of a Gram matrix, ``root @ root.T == gram``, as ``norms`` times
    a unit-row factor (``root = norms[:, None] * unit``)."""

    unit: Tensor  # [N, N] float64: rows of norm 1 (0 for zero gradients)
    norms: Tensor  # [N] float64: the gradients' norms

    @property
    def root(self) -> Tensor:
        return self.norms[:, None] * self.unit

    def coefficients(self, vector: Tensor) -> Tensor:
        """``w`` with ``root.T @ w == vector`` (``vector`` in the rows' span): ``grads.T @ w``
        is then the same combination of the gradients. Zero rows get weight 0."""
        scaled = torch.linalg.pinv(self.unit.T) @ vector  # = norms * w
        return torch.where(self.norms > 0, scaled / torch.where(self.norms > 0, self.norms, 1.0), 0.0)


def gram_square_root(gram: Tensor) -> GramRoot:
    """A square root of ``gram`` that keeps every row's norm exactly: ``D C D`` with ``D`` the
    norms and ``C`` the cosines; ``C``'s eigen-root is taken and scaled back by ``D``.

    Taking the root of ``gram`` itself mixes scales: a zero gradient came back as a
    ~1e-16 row (which ConFIG then normalized into a spurious unit direction) and a
    gradient 1e8 times smaller than another was lost in the largest eigenvalue's rounding.
    On ``C`` (unit diagonal) rounding is relative to 1 for every row; a zero gradient is
    an exact zero row. Eigenvalues within rounding of zero are set to zero.
    """
    g = gram.to(torch.float64)
    n = g.shape[0]
    norms = g.diagonal().clamp_min(0).sqrt()
    unit = torch.zeros(n, n, dtype=torch.float64, device=g.device)
    live = torch.nonzero(norms > 0).flatten()
    if len(live):
        d = norms[live]
        cosines = g[live][:, live] / (d[:, None] * d[None, :])
        values, vectors = torch.linalg.eigh(cosines)
        tol = values.abs().max() * n * torch.finfo(torch.float64).eps
        factor = vectors * torch.where(values > tol, values, 0.0).sqrt()
        unit[live, :len(live)] = factor / factor.norm(dim=1, keepdim=True).clamp_min(
            torch.finfo(torch.float64).tiny)
    return GramRoot(unit, norms)


class TorchJDRule(Rule):
    """Base of the rules that run a TorchJD aggregator (see the module docstring): building
    it on first use, its optional dependencies, its random draws (only a seed is drawn
    from the rule's generator, on the CPU)."""

    requires = ("torchjd",)
    install_hint = INSTALL_HINT
    #: How the result relates to TorchJD's aggregator on the same matrix (the property tests
    #: hold each rule to it): "exactly" (to rounding); "at unit scale" (TorchJD's weighting
    #: of the Gram matrix divided by its largest diagonal entry, i.e. TorchJD on the domain
    #: gradients scaled so that the largest has norm 1, the update scaled back: equal to
    #: TorchJD where its absolute eps do not cut in, scale-invariant everywhere); "within
    #: solver tolerance" (an iterative solver: as close as TorchJD is to itself on the same
    #: gradients in another column order).
    equals_torchjd: ClassVar[str] = "exactly"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._aggregator = None
        self._n: Optional[int] = None

    def generator_device(self, grads: Tensor) -> torch.device:
        return torch.device("cpu")

    def constructor_kwargs(self, n_domains: int) -> dict[str, Any]:
        """Keyword arguments of the TorchJD class (default: this rule's parameters)."""
        return dict(self.config)

    def aggregator(self, n_domains: int):
        """The TorchJD aggregator, built on first use (and again if N changes)."""
        if self._aggregator is None or self._n != n_domains:
            self.check_available()
            import torchjd.aggregation as aggregation  # noqa: PLC0415 - optional dependency

            self._aggregator = getattr(aggregation, self.name)(**self.constructor_kwargs(n_domains))
            self._n = n_domains
        return self._aggregator

    def reset(self) -> None:
        self._aggregator = None
        self._n = None


class TorchJDGramianRule(TorchJDRule, GramianRule):
    """TorchJD's Gramian weighting applied to the caller's Gram matrix."""

    #: Whether the weights are unchanged when all gradients are scaled: then the Gram
    #: matrix is divided by its largest diagonal entry first, which keeps solvers in range.
    scale_free_weights: ClassVar[bool] = True

    def weights(self, gram, generator):
        aggregator = self.aggregator(gram.shape[0])
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
        if not bool(gram64.diagonal().any()):  # every gradient is zero: so is the update
            return torch.zeros(gram.shape[0], dtype=torch.float64)
        if self.scale_free_weights:
            gram64 = gram64 / gram64.diagonal().max()
        with seeded_global_rng(generator, gram64.device), torch.no_grad():
            return self.weights_from(aggregator, gram64)

    def weights_from(self, aggregator, gram64: Tensor) -> Tensor:
        return aggregator.gramian_weighting(gram64)


class TorchJDSurrogateRule(TorchJDGramianRule):
    """An aggregator that depends on the gradients only through their inner products, run
    on an ``[N, N]`` square root ``R`` of the Gram matrix; its result ``R^T c`` maps back
    to ``grads^T c``."""

    def weights_from(self, aggregator, gram64: Tensor) -> Tensor:
        root = gram_square_root(gram64)
        return root.coefficients(aggregator(root.root))


class TorchJDMatrixRule(TorchJDRule):
    """A coordinate-wise aggregator: it reads ``[N, P]`` itself."""

    def combine(self, grads, *, gram, mask, generator, out):
        aggregator = self.aggregator(grads.shape[0])
        with seeded_global_rng(generator, grads.device), torch.no_grad():
            result = aggregator(grads)
        return result if out is None else out.copy_(result)


class UPGrad(TorchJDGramianRule):
    """UPGrad (Quinton & Rey, 2024): each gradient projected onto the dual cone of all, averaged.

    At unit scale: TorchJD zeroes a Gramian whose trace is below its ``norm_eps`` (1e-4)
    and then returns the plain mean, which happens for small domain gradients (norms
    below ~6e-3, common late in training); the projection itself is scale-invariant, and
    so is this rule.
    """

    name = "UPGrad"
    equals_torchjd = "at unit scale"
    summary = "projections onto the dual cone of the domain gradients, averaged (Jacobian descent)"
    native_scale = "mean"
    requires = ("torchjd", "quadprog", "qpsolvers")


class DualProj(TorchJDGramianRule):
    """DualProj: the mean gradient projected onto the dual cone of the domain gradients.

    At unit scale, for the reason given for :class:`UPGrad` (the same TorchJD projector).
    """

    name = "DualProj"
    equals_torchjd = "at unit scale"
    summary = "the mean gradient projected onto the dual cone of the domain gradients"
    native_scale = "mean"
    requires = ("torchjd", "quadprog", "qpsolvers")


class MGDA(TorchJDGramianRule):
    """MGDA (Désidéri, 2012; Sener & Koltun, 2018): the min-norm point of the convex hull."""

    name = "MGDA"
    summary = "minimum-norm convex combination of the domain gradients"
    native_scale = "mean"
    params = (fixed("epsilon", 0.001, "Frank-Wolfe stopping tolerance"),
              fixed("max_iters", 100, "Frank-Wolfe iterations"))


class CAGrad(TorchJDGramianRule):
    """CAGrad (Liu et al., NeurIPS 2021): the best worst-domain improvement near the mean.

    At unit scale: TorchJD zeroes a Gramian whose trace is below ``norm_eps`` and then
    returns a zero update (no step at all) for small domain gradients; ``c`` is relative
    to the mean gradient's norm, so the method is scale-invariant, and so is this rule
    (``cagrad_norm_eps`` then only decides when the step is at the Pareto front).
    """

    name = "CAGrad"
    equals_torchjd = "at unit scale"
    summary = "maximizes the worst domain's improvement within a ball around the mean gradient"
    native_scale = "mean"
    requires = ("torchjd", "cvxpy", "clarabel")
    params = (Param("c", 0.4, lambda r: float(r.uniform(0.1, 0.9)),
                    "radius of the ball around the mean gradient (relative to its norm)"),
              fixed("norm_eps", 0.0001))


class IMTLG(TorchJDGramianRule):
    """IMTL-G (Liu et al., ICLR 2021): the combination with equal projections on every gradient."""

    name = "IMTLG"
    summary = "the combination whose projections on all unit domain gradients are equal"
    native_scale = "mean"


class AlignedMTL(TorchJDGramianRule):
    """Aligned-MTL (Senushkin et al., CVPR 2023): gradients aligned by the Gram's eigenbasis."""

    name = "AlignedMTL"
    summary = "the domain gradients made orthogonal with equal norms (condition number 1)"
    native_scale = "mean"
    params = (Param("scale_mode", "min", lambda r: str(r.choice(["min", "median", "rmse"])),
                    "which singular value sets the scale", choices=("min", "median", "rmse")),)


class GradVac(TorchJDGramianRule):
    """GradVac (Wang et al., ICLR 2021): pairwise cosines pulled to their running targets.

    At unit scale: TorchJD adds ``eps`` (1e-8) to the products of norms in its cosines,
    which shrinks every cosine once gradient norms approach 1e-4; cosines and the
    corrections are scale-invariant, so here ``eps`` is relative to the largest gradient.
    """

    name = "GradVac"
    equals_torchjd = "at unit scale"
    summary = "PCGrad-like corrections toward an EMA of each pair's cosine"
    params = (Param("beta", 0.5, lambda r: float(10 ** r.uniform(-2.5, -0.3)),
                    "EMA decay of the target cosines"),
              fixed("eps", 1e-8))


class NashMTL(TorchJDSurrogateRule):
    """Nash-MTL (Navon et al., ICML 2022): weights of the Nash bargaining solution."""

    name = "NashMTL"
    equals_torchjd = "within solver tolerance"
    summary = "Nash bargaining weights (G a = 1 / a), norm capped at max_norm"
    scale_free_weights = False
    requires = ("torchjd", "cvxpy", "ecos")
    params = (Param("max_norm", 1.0, lambda r: float(10 ** r.uniform(-1, 1)),
                    "cap on the update's norm (0: no cap)"),
              fixed("update_weights_every", 1),
              fixed("optim_niter", 20))

    def constructor_kwargs(self, n_domains: int) -> dict[str, Any]:
        return {"n_tasks": n_domains, **self.config}


class FairGrad(TorchJDGramianRule):
    """FairGrad (Ban & Ji, ICML 2024): alpha-fair weights (G w = w^(-1/alpha))."""

    name = "FairGrad"
    equals_torchjd = "within solver tolerance"
    summary = "alpha-fair utility maximization over the domains"
    scale_free_weights = False
    requires = ("torchjd", "scipy")
    params = (Param("alpha", 1.0, lambda r: float(10 ** r.uniform(-0.5, 0.7)),
                    "fairness: 0 = sum, 1 = proportional, large = max-min"),
              fixed("max_iters", None))


class ConFIG(TorchJDSurrogateRule):
    """ConFIG (Liu et al., ICLR 2025): the direction with equal cosine to every gradient."""

    name = "ConFIG"
    summary = "the conflict-free direction with equal cosine to every domain gradient"


class TrimmedMean(TorchJDMatrixRule):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): the median for N = 3."""

    name = "TrimmedMean"
    summary = "coordinate-wise mean after dropping the extreme values (median for 3 domains)"
    native_scale = "mean"
    min_domains = 3
    params = (fixed("trim_number", 1, "values dropped at each end of every coordinate"),)


class GradDrop(TorchJDMatrixRule):
    """GradDrop (Chen et al., NeurIPS 2020): keep one sign per coordinate at random, by purity."""

    name = "GradDrop"
    summary = "per coordinate, keep the positive or negative parts at random by sign purity"
    params = (Param("leak", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])),
                    "fraction of every gradient that always passes"),)

    def constructor_kwargs(self, n_domains: int) -> dict[str, Any]:
        leak = self.config["leak"]
        return {"leak": None if not leak else torch.full((n_domains,), float(leak))}


class ExcessMTL(TorchJDMatrixRule):
    """ExcessMTL (He et al., ICML 2024): weights from each domain's estimated excess risk."""

    name = "ExcessMTL"
    summary = "weights from AdaGrad-style excess-risk estimates per domain"
    native_scale = "mean"
    params = (Param("robust_step_size", 1.0, lambda r: float(10 ** r.uniform(-2, 0.5)),
                    "step size of the weights' exponentiated update"),
              fixed("n_warmup_steps", 0))
