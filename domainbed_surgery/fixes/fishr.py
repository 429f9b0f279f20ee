"""Fishr (Rame et al., ICML 2022) without BackPACK, numerically equal to DomainBed's.

Why: DomainBed's ``Fishr`` gets per-sample gradients of the classifier from
BackPACK's ``BatchGrad``, which is not installed by default and fails with current
torch (``'Parameter' object has no attribute 'grad_batch'``). This class computes
the same per-sample gradients without it and otherwise follows DomainBed's
``Fishr.update`` step by step.

What DomainBed differentiates: ``CrossEntropyLoss(reduction='none')(logits, y).sum()``
backpropagated with ``create_graph=True`` into the classifier's parameters only;
``grad_batch`` holds the gradient of each sample's own term (no ``1/N``). For the
linear classifier ``z = W f + b`` that is, in closed form,

    dL_i/dW = (softmax(z_i) - onehot(y_i)) f_i^T,    dL_i/db = softmax(z_i) - onehot(y_i),

built here from differentiable tensors, so the penalty backpropagates into the
classifier *and* the featurizer, as with ``create_graph=True``. With
``nonlinear_classifier`` (DomainBed's MLP) the per-sample gradients come from
``torch.func.vmap(torch.func.grad(...))`` instead, also differentiable.

The rest reuses DomainBed's own pieces: per-domain centred variance of the
per-sample gradients, ``misc.MovingAverage(ema, oneminusema_correction=True)`` per
domain, penalty = mean over domains of ``misc.l2_between_dicts(domain variance,
mean variance)``; ``lambda`` applies from step ``penalty_anneal_iters`` on, where
Adam is re-created (unless that step is 0); ``update`` returns ``loss``, ``nll``,
``penalty``.

Registration replaces ``domainbed.algorithms.Fishr`` with this class (the one
deliberate exception to "never replace"; see ``registration.REPLACES``). DomainBed's
original stays reachable as ``domainbed.algorithms.Fishr_BackPACK`` and
``Fishr.original`` (for reference: its ``__init__`` calls ``super(Fishr, self)``,
which finds our class at that name, so to *run* it set
``DOMAINBED_SURGERY_KEEP_BACKPACK_FISHR=1``, which keeps DomainBed's Fishr in place).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from domainbed.algorithms import ERM
from domainbed.lib.misc import MovingAverage, l2_between_dicts
from torch import Tensor


def linear_per_sample_grads(features: Tensor, logits: Tensor, y: Tensor) -> "OrderedDict[str, Tensor]":
    """Per-sample gradients of ``sum_i CE(logits_i, y_i)`` w.r.t. a Linear's weight and bias.

    ``features`` [N, D] is the Linear's input, ``logits`` [N, C] its output.
    Returns ``{"weight": [N, C*D], "bias": [N, C]}`` (BackPACK's ``grad_batch``
    flattened as DomainBed does), differentiable w.r.t. ``features`` and ``logits``.
    """
    residual = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    weight = residual.unsqueeze(2) * features.unsqueeze(1)
    return OrderedDict(weight=weight.reshape(features.shape[0], -1), bias=residual)


def functional_per_sample_grads(classifier: nn.Module, features: Tensor,
                                y: Tensor) -> "OrderedDict[str, Tensor]":
    """Per-sample gradients of the summed cross-entropy for any classifier (torch.func)."""
    from torch.func import functional_call, grad, vmap  # noqa: PLC0415

    params = OrderedDict(classifier.named_parameters())

    def sample_loss(p, f, t):
        logits = functional_call(classifier, p, (f.unsqueeze(0),))
        return F.cross_entropy(logits, t.unsqueeze(0), reduction="sum")

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features, y)
    return OrderedDict((k, g.reshape(features.shape[0], -1)) for k, g in grads.items())


class Fishr(ERM):
    """Invariant gradient variances for out-of-distribution generalization, BackPACK-free."""

    #: Marks this class as ours for :mod:`..plugin.registration` (it sits at DomainBed's name).
    domainbed_surgery: ClassVar[bool] = True
    #: DomainBed's BackPACK Fishr, set when registration replaces it.
    original: ClassVar[Optional[type]] = None

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        # ERM builds featurizer, classifier, network and Adam in DomainBed Fishr's
        # order (same parameters, same random initialization for a given seed).
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.num_domains = num_domains
        self.register_buffer("update_count", torch.tensor([0]))
        self.ema_per_domain = [
            MovingAverage(ema=self.hparams["ema"], oneminusema_correction=True)
            for _ in range(self.num_domains)
        ]
        self._init_optimizer()

    def _init_optimizer(self):
        self.optimizer = torch.optim.Adam(
            list(self.featurizer.parameters()) + list(self.classifier.parameters()),
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
        )

    def update(self, minibatches, unlabeled=None):
        assert len(minibatches) == self.num_domains
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        len_minibatches = [x.shape[0] for x, y in minibatches]

        all_z = self.featurizer(all_x)
        all_logits = self.classifier(all_z)

        penalty = self.compute_fishr_penalty(all_z, all_logits, all_y, len_minibatches)
        all_nll = F.cross_entropy(all_logits, all_y)

        penalty_weight = 0
        if self.update_count >= self.hparams["penalty_anneal_iters"]:
            penalty_weight = self.hparams["lambda"]
            if self.update_count == self.hparams["penalty_anneal_iters"] != 0:
                # As DomainBed (and IRM, V-REx): reset Adam at the jump in gradient scale.
                self._init_optimizer()
        self.update_count += 1

        objective = all_nll + penalty_weight * penalty
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()

        return {"loss": objective.item(), "nll": all_nll.item(), "penalty": penalty.item()}

    def compute_fishr_penalty(self, all_z, all_logits, all_y, len_minibatches):
        dict_grads = self.per_sample_grads(all_z, all_logits, all_y)
        grads_var_per_domain = self._get_grads_var_per_domain(dict_grads, len_minibatches)
        return self._compute_distance_grads_var(grads_var_per_domain)

    def per_sample_grads(self, all_z, all_logits, all_y) -> "OrderedDict[str, Tensor]":
        """BackPACK's ``grad_batch`` of the classifier, flattened to ``[N, -1]`` per parameter."""
        if isinstance(self.classifier, nn.Linear):
            return linear_per_sample_grads(all_z, all_logits, all_y)
        return functional_per_sample_grads(self.classifier, all_z, all_y)

    def _get_grads_var_per_domain(self, dict_grads, len_minibatches):
        grads_var_per_domain = [{} for _ in range(self.num_domains)]
        for name, grads in dict_grads.items():
            for domain_id, env_grads in enumerate(torch.split(grads, len_minibatches)):
                centered = env_grads - env_grads.mean(dim=0, keepdim=True)
                grads_var_per_domain[domain_id][name] = centered.pow(2).mean(dim=0)
        return [self.ema_per_domain[d].update(grads_var_per_domain[d])
                for d in range(self.num_domains)]

    def _compute_distance_grads_var(self, grads_var_per_domain):
        grads_var = {
            name: torch.stack([v[name] for v in grads_var_per_domain]).mean(dim=0)
            for name in grads_var_per_domain[0]
        }
        penalty = 0
        for domain_var in grads_var_per_domain:
            penalty += l2_between_dicts(domain_var, grads_var)
        return penalty / self.num_domains
