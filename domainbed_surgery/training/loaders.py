"""DomainBed's data loaders, with a training loader whose position can be saved and restored.

DomainBed's ``InfiniteDataLoader`` batches ``RandomSampler(dataset, replacement=True)``
(or a ``WeightedRandomSampler`` of one batch, with class weights) with ``drop_last``
and repeats it for ever. Each pass of the unweighted sampler draws a seed from torch's
global generator when it starts and then draws indices from a private generator: that
private state lives in a Python generator frame and cannot be saved.

:class:`ResumableInfiniteLoader` yields exactly the same batches and draws from the
global generator at exactly the same moments: each pass draws its seed the way
``RandomSampler`` does and gives it to torch's own ``RandomSampler``/``BatchSampler``,
so the indices are torch's. Its state is small: the current pass (seed and batches
taken), the batches made but not yet consumed (worker prefetch) and how many were
consumed. Restored from it, a new loader continues the same sequence, given the global
generator's state of the same moment (:mod:`.state` saves both).

:class:`EvalLoader` is DomainBed's ``FastDataLoader`` (one pass in random order per
evaluation, the order's seed drawn from the global generator). Both loaders' worker
processes ignore SIGUSR1 and SIGUSR2, which Slurm sends to every process of a job at its
time limit: the training process then stops after its step, with a resume state, and
needs its workers for that step (SIGTERM and SIGINT keep torch's handling).
"""

from __future__ import annotations

import collections
import signal
from typing import Optional

import torch
import torch.utils.data

from ..fixes.loaders import check_batch_fits
from ..launch.process import NOTICE_SIGNALS


def draw_seed() -> int:
    """A pass's seed from torch's global generator, drawn as ``RandomSampler`` draws it."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn``: a data worker leaves a time limit's signal to the training process."""
    for sig in NOTICE_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class ResumableBatches(torch.utils.data.Sampler):
    """The endless index batches of DomainBed's ``InfiniteDataLoader``, with a state.

    A pass is torch's ``BatchSampler(sampler, batch_size, drop_last=True)`` over
    ``RandomSampler(dataset, replacement=True, generator=<seeded with the pass's seed>)``
    (``len(dataset) // batch_size`` batches), or, with ``weights``, over
    ``WeightedRandomSampler(weights, batch_size)`` (one batch, drawn from the global
    generator as DomainBed's does).
    """

    def __init__(self, dataset, weights, batch_size: int, state: Optional[dict] = None) -> None:
        self.dataset, self.weights, self.batch_size = dataset, weights, batch_size
        self.generated = 0  # batches handed out so far
        self.made: collections.deque = collections.deque()  # (number, batch) not yet consumed
        self.current: Optional[list] = None  # [seed, batches taken] of the unfinished pass
        self._replay: collections.deque = collections.deque()
        if state is not None:
            self.generated = state["consumed"]
            self._replay.extend(list(b) for b in state["unconsumed"])
            self.current = list(state["current"]) if state["current"] is not None else None

    def _pass(self, seed: Optional[int]):
        if self.weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(self.weights, replacement=True,
                                                             num_samples=self.batch_size)
        else:
            generator = torch.Generator()
            generator.manual_seed(seed)
            sampler = torch.utils.data.RandomSampler(self.dataset, replacement=True,
                                                     generator=generator)
        return iter(torch.utils.data.BatchSampler(sampler, self.batch_size, drop_last=True))

    def _hand_out(self, batch: list):
        self.made.append((self.generated, batch))
        self.generated += 1
        return batch

    def __iter__(self):
        while self._replay:  # made before the checkpoint, not yet consumed then
            yield self._hand_out(self._replay.popleft())
        while True:
            if self.current is not None:  # continue a pass: same seed, skip what was taken
                batches = self._pass(self.current[0])
                for _ in range(self.current[1]):
                    next(batches)
            else:
                seed = None if self.weights is not None else draw_seed()
                self.current = [seed, 0]
                batches = self._pass(seed)
            for batch in batches:
                self.current[1] += 1
                yield self._hand_out(batch)
            self.current = None  # exhausted: the next batch starts a pass (and draws)

    def __len__(self):
        raise TypeError("an endless sampler has no length")

    def forget(self, consumed: int) -> None:
        """The loader has consumed ``consumed`` batches: drop them from :attr:`made`."""
        while self.made and self.made[0][0] < consumed:
            self.made.popleft()

    def state(self, consumed: int) -> dict:
        self.forget(consumed)
        current = self.current
        if current is not None and self.weights is not None:
            current = None  # a weighted pass is one batch: nothing left to continue
        return {"consumed": consumed, "unconsumed": [b for _, b in self.made],
                "current": None if current is None else list(current)}


class ResumableInfiniteLoader:
    """DomainBed's ``InfiniteDataLoader`` (same batches, same use of the global generator),
    with :meth:`state_dict` and a ``state`` argument to continue from one."""

    def __init__(self, dataset, weights, batch_size: int, num_workers: int,
                 state: Optional[dict] = None) -> None:
        check_batch_fits(dataset, weights, batch_size)  # the fix registration gives DomainBed's
        self._batches = ResumableBatches(dataset, weights, batch_size, state)
        self.consumed = 0 if state is None else state["consumed"]
        self._iterator = iter(torch.utils.data.DataLoader(
            dataset, num_workers=num_workers, batch_sampler=self._batches,
            worker_init_fn=ignore_stop_signals if num_workers else None))

    def __iter__(self):
        while True:
            batch = next(self._iterator)
            self.consumed += 1
            yield batch

    def __len__(self):
        raise ValueError

    def state_dict(self) -> dict:
        return self._batches.state(self.consumed)


class _Endless(torch.utils.data.Sampler):
    """DomainBed's ``_InfiniteSampler``: one sampler's passes, end to end, for ever."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        while True:
            yield from self.sampler


class EvalLoader:
    """DomainBed's ``FastDataLoader``: each iteration is one pass over ``dataset`` in a
    random order (drawn from the global generator), in batches of ``batch_size``."""

    def __init__(self, dataset, batch_size: int, num_workers: int) -> None:
        batch_sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, replacement=False),
            batch_size=batch_size, drop_last=False)
        self._iterator = iter(torch.utils.data.DataLoader(
            dataset, num_workers=num_workers, batch_sampler=_Endless(batch_sampler),
            worker_init_fn=ignore_stop_signals if num_workers else None))
        self._length = len(batch_sampler)

    def __iter__(self):
        for _ in range(self._length):
            yield next(self._iterator)

    def __len__(self):
        return self._length
