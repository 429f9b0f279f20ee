"""The surgery algorithms: one ``GradientSurgery(ERM)`` class per registered rule.

Every rule of :mod:`domainbed_surgery.rules` (AgrSum, AgrRand, PCGrad and TorchJD's
aggregators) becomes a subclass of DomainBed's ``ERM`` named after the rule, keeping
ERM's featurizer, classifier, Adam optimizer and ``predict``. One
:meth:`GradientSurgery.update` computes one gradient per training-domain minibatch
(a separate forward and backward each, so BatchNorm normalizes by per-domain batch
statistics), written straight into the rows of one preallocated ``[N, P]`` buffer,
combines them with the rule and takes one step. BatchNorm running statistics take one
update per step from the mean of the per-domain batch statistics
(:mod:`domainbed_surgery.surgery.batchnorm`), not N ordered ones.
"""

from __future__ import annotations

import collections
import functools
import math
import warnings
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from domainbed.algorithms import ERM
from torch import Tensor

from .. import rules, run_facts
from .batchnorm import PooledBatchNormStats
from .hparams import check_diagnostics_every, check_switches, rule_from_hparams


class GradientSurgery(ERM):
    """ERM trained on a surgery-combined update of the per-domain gradients.

    Subclasses set :attr:`rule_class`; the instance's :attr:`rule` is configured from the
    hparams (and keeps the rule's state across steps). ``update`` returns ``loss`` (mean
    of the domain losses), ``agreement`` (fraction of parameters on which all domain
    gradients agree in sign, Eq. 2) and ``cosine`` (mean pairwise cosine similarity of
    the domain gradients; absent when no pair has one, e.g. with a single domain);
    DomainBed logs them to ``results.jsonl``.

    hparam ``surgery_batches``: "multi" (default) combines one gradient per source
    domain; "single" is the paper's control (Fig. 4): each step draws one source
    domain d at random and combines N gradients from N batches of d, so both arms
    use N x batch_size samples per update. DomainBed's loaders give one batch per
    domain per step, so the N batches of d are its N most recent ones (this step's
    and the N-1 previous steps'); each batch is thus used once in expectation, as in
    the "multi" arm. During the first N-1 steps the missing batches repeat d's.

    hparam ``surgery_reduction``: the scale of the update, "sum" or "mean" of the N domain
    gradients. The default is the scale the rule was published at (``native_scale``:
    "sum" for the paper's Eq. 3-5 and the authors' code); the other value multiplies or
    divides the rule's result by N ("mean" is the scale of ERM's mean-loss gradient, so
    Adam's weight decay acts as it does for ERM).

    hparam ``surgery_layer_agreement`` (default false): also return the agreement
    fraction of every parameter tensor as ``agreement/<parameter name>``.

    hparam ``surgery_diagnostics_every`` (k, default :data:`.hparams.DIAGNOSTICS_EVERY`):
    ``agreement`` and ``cosine`` are computed on the first step and every k-th after
    (DomainBed averages them over those steps since the previous checkpoint); the update
    itself is the same on every step. ``update`` returns ``diagnostics_every`` = k.

    One step is four public phases, which ``update`` and the benchmark both call:
    :meth:`gradients`, :meth:`combine`, :meth:`apply`, :meth:`metrics`.
    """

    rule_class: ClassVar[type[rules.Rule]]

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        # Fails before any network is built if the rule's dependencies are missing.
        rule = rule_from_hparams(type(self).rule_class, hparams)
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.rule = rule
        # DomainBed seeds torch with --seed right before building the algorithm.
        self._seed = torch.initial_seed()
        self._generators: dict[str, torch.Generator] = {}  # by device type
        self._params: tuple[torch.nn.Parameter, ...] = ()  # trainable, in buffer order
        self._names: list[str] = []  # their names in self.network
        self._sizes: list[int] = []  # their numel
        self._grads: Optional[Tensor] = None  # [N, P]: one row per domain
        self._rows: list[list[Tensor]] = []  # per domain, per parameter: views of _grads
        self._combined: Optional[Tensor] = None  # [P]: the update
        self._combined_views: list[Tensor] = []
        self._warned_single_domain = False
        self.surgery_batches, self.surgery_reduction = check_switches(hparams, rule.native_scale)
        self._recent: dict[int, collections.deque] = {}  # "single" arm: domain -> batches
        self.layer_agreement = bool(hparams.get("surgery_layer_agreement", False))
        self.diagnostics_every = check_diagnostics_every(hparams)
        self._steps = 0  # updates so far: diagnostics on every diagnostics_every-th
        run_facts.record("algorithm", {
            "rule": rule.name, "rule_config": dict(rule.config), "native_scale": rule.native_scale,
            "surgery_reduction": self.surgery_reduction, "surgery_batches": self.surgery_batches})

    # -- buffers -------------------------------------------------------------
    def _trainable(self) -> tuple[torch.nn.Parameter, ...]:
        return tuple(p for p in self.network.parameters() if p.requires_grad)

    def _prepare(self, n_domains: int) -> Tensor:
        """The ``[N, P]`` buffer, (re)allocated when N, the parameters or the device change
        (:meth:`domain_gradients` writes every row whole)."""
        params = self._trainable()
        if not params:
            raise RuntimeError(f"{type(self).__name__}: the network has no trainable parameter")
        ref = params[0]
        stale = (self._grads is None or self._grads.shape[0] != n_domains
                 or len(params) != len(self._params)
                 or any(p is not q for p, q in zip(params, self._params))
                 or self._grads.device != ref.device or self._grads.dtype != ref.dtype)
        if stale:
            if any(p.dtype != ref.dtype or p.device != ref.device for p in params):
                raise TypeError(f"{type(self).__name__} needs all trainable parameters "
                                "on one device with one dtype")
            sizes = [p.numel() for p in params]
            names = {id(p): n for n, p in self.network.named_parameters()}
            self._names = [names[id(p)] for p in params]
            self._sizes = sizes
            self._params = params
            self._grads = torch.empty(n_domains, sum(sizes), device=ref.device, dtype=ref.dtype)
            self._rows = [_views(row, params, sizes) for row in self._grads]
            self._combined = torch.empty(sum(sizes), device=ref.device, dtype=ref.dtype)
            self._combined_views = _views(self._combined, params, sizes)
        return self._grads

    def _rng(self, device: torch.device) -> torch.Generator:
        """This run's generator on ``device``'s type, seeded from DomainBed's --seed."""
        if device.type not in self._generators:
            self._generators[device.type] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device.type]

    # -- one step ------------------------------------------------------------
    def domain_gradients(self, minibatches) -> tuple[Tensor, Tensor]:
        """Fill the buffer with one loss gradient per minibatch; return it and the losses.

        On the CPU each backward starts with ``.grad`` unset, so autograd stores each
        gradient as it computes it (no accumulation); a post-accumulate hook copies it into
        the domain's row at once, while it is in cache, and unsets it: one write of the
        row, without zeroing it first or reading it back. On a GPU, where a Python hook and
        a copy kernel per parameter cost more than the copy itself, ``torch.autograd.grad``
        returns the gradients and one ``torch._foreach_copy_`` writes the row
        (:data:`HOOKED_COPY_DEVICES`). Both give the same bits.
        """
        grads = self._prepare(len(minibatches))
        hooked = grads.device.type in HOOKED_COPY_DEVICES
        losses = []
        stored: set[int] = set()  # indices of the parameters whose row slice is written

        def store(k: int, p: torch.nn.Parameter) -> None:
            # ``row``: the current domain's row (the loop below); ``p.grad`` the gradient
            # autograd just stored, still in cache
            row[k].copy_(p.grad)
            p.grad = None
            stored.add(k)

        for p in self._params:
            p.grad = None
        hooks = [p.register_post_accumulate_grad_hook(functools.partial(store, k))
                 for k, p in enumerate(self._params)] if hooked else []
        try:
            for row, (x, y) in zip(self._rows, minibatches):
                stored.clear()
                loss = F.cross_entropy(self.predict(x), y)
                if hooked:
                    loss.backward()
                else:
                    found = torch.autograd.grad(loss, self._params, allow_unused=True)
                    reached = [k for k, g in enumerate(found) if g is not None]
                    if reached:
                        torch._foreach_copy_([row[k] for k in reached], [found[k] for k in reached])
                    stored.update(reached)
                unreached = [row[k] for k in range(len(row)) if k not in stored]
                if unreached:  # not reached by this loss: zero
                    torch._foreach_zero_(unreached)
                losses.append(loss.detach())
        finally:
            for hook in hooks:
                hook.remove()
        return grads, torch.stack(losses)

    def gradient_batches(self, minibatches) -> list:
        """The N batches whose gradients are combined: one per domain, or N of one domain."""
        if self.surgery_batches == "multi":
            return list(minibatches)
        n = len(minibatches)
        for d, batch in enumerate(minibatches):
            self._recent.setdefault(d, collections.deque(maxlen=n)).appendleft(batch)
        d = int(torch.randint(n, (1,), generator=self._rng(torch.device("cpu"))))
        recent = list(self._recent[d])
        return [recent[k % len(recent)] for k in range(n)]

    def gradients(self, minibatches) -> tuple[Tensor, Tensor]:
        """Phase 1: the ``[N, P]`` gradients to combine (:meth:`gradient_batches`, then
        :meth:`domain_gradients`) and the N losses."""
        return self.domain_gradients(self.gradient_batches(minibatches))

    def combine(self, grads: Tensor, diagnostics: bool = True) -> rules.OnePass:
        """Phase 2: the rule's update of ``grads`` into :attr:`update_vector`, at the
        ``surgery_reduction`` scale; returns the step's one pass over ``grads``.

        One read of ``grads`` computes the squared norms (the finiteness check), an
        elementwise rule's result (Agr-Sum, Agr-Rand) and, with ``diagnostics``, the Gram
        matrix and the agreement counts (per parameter tensor too, with
        ``surgery_layer_agreement``); other rules then take ``weights @ grads`` or their own
        pass (:func:`~..rules.combine_in_one_pass`). Raises ``FloatingPointError`` on a
        non-finite domain gradient, before any weight or BatchNorm statistic changes.
        """
        rule, n = self.rule, grads.shape[0]
        combined, passed = rules.combine_in_one_pass(
            rule, grads, self._rng(rule.generator_device(grads)), out=self._combined,
            segments=self._sizes if self.layer_agreement and diagnostics else None,
            diagnostics=diagnostics)
        if combined is not self._combined:
            self._combined.copy_(combined)
        if n > 1 and self.surgery_reduction != rule.native_scale:
            self._combined.mul_(n if self.surgery_reduction == "sum" else 1.0 / n)
        return passed

    def apply(self) -> None:
        """Phase 3: :attr:`update_vector` becomes the parameters' ``.grad``; one optimizer step."""
        for p, g in zip(self._params, self._combined_views):
            p.grad = g
        self.optimizer.step()

    def metrics(self, losses: Tensor, passed: rules.OnePass) -> dict[str, float]:
        """Phase 4: what ``update`` returns (DomainBed logs it): ``loss``, and where the pass
        computed them ``agreement``, ``cosine`` and per-tensor ``agreement/<name>``;
        ``diagnostics_every`` says on which share of the steps they are computed."""
        values = [losses.mean()]
        if passed.n_agree is not None:
            values += [passed.n_agree / passed.sq_norms.new_tensor(self._combined.numel()),
                       rules.pairwise_cosine(passed.gram)]
        if passed.segment_agree is not None:
            values += [a / size for a, size in zip(passed.segment_agree, self._sizes)]
        values = torch.stack([v.double() for v in values]).tolist()  # one device sync
        logged = {"loss": values[0], "diagnostics_every": float(self.diagnostics_every)}
        if passed.n_agree is not None:
            logged.update(agreement=values[1], cosine=values[2])
            if math.isnan(logged["cosine"]):  # no defined pair (one domain, zero gradients)
                del logged["cosine"]
        if passed.segment_agree is not None:
            logged.update({f"agreement/{name}": v for name, v in zip(self._names, values[3:])})
        return logged

    @property
    def update_vector(self) -> Optional[Tensor]:
        """The ``[P]`` update of the last :meth:`combine` (views of it become ``.grad``)."""
        return self._combined

    def update(self, minibatches, unlabeled=None):
        if len(minibatches) == 0:
            raise ValueError(f"{type(self).__name__}.update needs at least one minibatch")
        if len(minibatches) == 1 and not self._warned_single_domain:
            warnings.warn(f"{type(self).__name__} got a single training domain: gradient "
                          "surgery has nothing to combine, so this is plain ERM.", stacklevel=2)
            self._warned_single_domain = True
        diagnostics = self._steps % self.diagnostics_every == 0
        self._steps += 1
        # Per-domain batch statistics in the forwards, one pooled running update per step.
        with PooledBatchNormStats(self.network) as batchnorm:
            grads, losses = self.gradients(minibatches)
        passed = self.combine(grads, diagnostics)
        batchnorm.commit()
        self.apply()
        return self.metrics(losses, passed)


#: Device types whose gradients are copied into the ``[N, P]`` buffer by a hook per parameter
#: as autograd stores them (in cache); elsewhere ``autograd.grad`` and one fused copy
#: (measured on an H200: docs/results/gpu/README.md).
HOOKED_COPY_DEVICES = frozenset({"cpu"})


def _views(flat: Tensor, params, sizes) -> list[Tensor]:
    return [chunk.view_as(p) for chunk, p in zip(flat.split(sizes), params)]


def algorithm_class(rule_class: type[rules.Rule]) -> type[GradientSurgery]:
    """The DomainBed algorithm for ``rule_class``: a :class:`GradientSurgery` named after it."""
    return type(rule_class.name, (GradientSurgery,), {
        "rule_class": rule_class,
        "__module__": __name__,
        "__qualname__": rule_class.name,
        "__doc__": f"{rule_class.name} on DomainBed's domains: {rule_class.summary}.",
    })


#: Algorithm classes for every registered rule, available or not (see registration).
ALGORITHMS: dict[str, type[GradientSurgery]] = {
    name: algorithm_class(rules.get(name)) for name in rules.names(available_only=False)}
