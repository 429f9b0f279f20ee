"""Reference rows of the benchmark, not registered in DomainBed: the authors' scheme of
computing Agr-Sum, and the per-domain floor every per-domain-gradient method pays.

Imports DomainBed's algorithms: import it after registering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from domainbed import algorithms as db_algorithms

class PaperSchemeAgrSum(db_algorithms.ERM):
    """Agr-Sum the way the authors' public code computes it (reference for timing).

    Per domain: ``zero_grad``, forward, cross-entropy, backward, then every
    parameter's ``.grad`` is cloned, flattened and concatenated into a new vector.
    The N vectors are stacked; agreement is taken from freshly allocated sign
    tensors (``|sum_i sgn(g_i)| == N``, so all-zero components count as conflicts,
    as in their code; the sum there is 0 either way); the masked sum is written
    back into ``.grad`` slice by slice and Adam steps. Same result as
    :class:`~domainbed_surgery.surgery.algorithm.GradientSurgery`, different memory traffic.
    """

    def update(self, minibatches, unlabeled=None):
        params = [p for p in self.network.parameters() if p.requires_grad]
        flat_grads = []
        total_loss = 0.0
        for x, y in minibatches:
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.predict(x), y)
            loss.backward()
            flat_grads.append(torch.cat([
                (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).flatten()
                for p in params]))
            total_loss += loss.item()
        stacked = torch.stack(flat_grads)
        signs = torch.sign(stacked)
        agree = signs.sum(dim=0).abs() == len(minibatches)
        combined = stacked.sum(dim=0) * agree.to(stacked.dtype)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(combined[offset:offset + n].view_as(p))
            offset += n
        self.optimizer.step()
        return {"loss": total_loss / len(minibatches)}


class PerDomainFloor(db_algorithms.ERM):
    """N per-domain forward/backward passes summed into ``.grad``, one Adam step.

    Not a DG method: the least any per-domain-gradient algorithm must do (the
    extra passes over ERM's one batched pass, and one optimizer step).
    """

    def update(self, minibatches, unlabeled=None):
        self.optimizer.zero_grad()
        losses = []
        for x, y in minibatches:
            loss = F.cross_entropy(self.predict(x), y)
            loss.backward()
            losses.append(loss.detach())
        self.optimizer.step()
        return {"loss": torch.stack(losses).mean().item()}
