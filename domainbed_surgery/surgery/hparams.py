"""The hparams of the surgery algorithms, under DomainBed's keys.

Each algorithm gets ERM's hparams plus fixed switches that are never searched,
``surgery_batches`` (the paper's control, Fig. 4), ``surgery_reduction`` (the update's
scale), ``surgery_layer_agreement`` and ``surgery_diagnostics_every`` (diagnostics), and
its rule's parameters under
the key ``<rule name in lower case>_<parameter>`` (``cagrad_c``, ``pcgrad_order``), as
DomainBed prefixes its own (``irm_lambda``). Light: imports nothing heavy.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

#: ``surgery_batches``: "multi", one gradient per source domain (the method); "single",
#: N gradients from N batches of one source domain drawn at random each step (the
#: control of the paper's Fig. 4).
SURGERY_BATCHES = ("multi", "single")
#: ``surgery_reduction``: the update's scale, "sum" (the paper's Eq. 3-5 and the authors'
#: code) or "mean" (ERM's mean-loss scale) of the N domain gradients. Default: the scale
#: the rule was published at. Adam is scale-free but for its eps and its L2 weight decay,
#: which "sum" makes N times weaker than ERM's.
SURGERY_REDUCTIONS = ("sum", "mean")


#: ``surgery_diagnostics_every``: the logged agreement and cosine are computed on every
#: k-th step (a Gramian rule gets its Gram matrix on every step regardless). 10, by
#: measurement: on ResNet-18 at 64 px (11.2 M parameters, 3 x 16) they cost 12-15 ms of a
#: 380-410 ms step when chosen (Gram matrix and count over the [N, P] buffer); since the
#: compiled CPU kernels take them in the step's one read, 0.7-1.4 ms of a 210 ms step
#: (docs/results/cpu_step_time), so every step would cost 0.5% and every 10th 0.05%; kept
#: at 10 so that records stay comparable, and a checkpoint of 50-300 steps still averages
#: 5-30 of them.
DIAGNOSTICS_EVERY = 10


class HParam(NamedTuple):
    """A DomainBed hparam: key, default, and its random-search draw from a RandomState."""

    name: str
    default: Any
    random: Callable[[Any], Any]


def domainbed_key(rule_class, param) -> str:
    """DomainBed's key for ``param`` of ``rule_class``: ``<name in lower case>_<arg>``."""
    return f"{rule_class.name.lower()}_{param.arg}"


def surgery_hparams(rule_class) -> tuple[HParam, ...]:
    """The switches of every surgery algorithm, then the rule's own parameters."""
    scale = rule_class.native_scale
    return (HParam("surgery_batches", "multi", lambda r: "multi"),
            HParam("surgery_layer_agreement", False, lambda r: False),
            HParam("surgery_reduction", scale, lambda r: scale),
            HParam("surgery_diagnostics_every", DIAGNOSTICS_EVERY, lambda r: DIAGNOSTICS_EVERY),
            *(HParam(domainbed_key(rule_class, p), p.default, p.sample) for p in rule_class.params))


def rule_from_hparams(rule_class, hparams: Mapping[str, Any]):
    """The rule configured from DomainBed hparams (missing keys take their default).

    Fails before anything is built if the rule's optional dependencies are missing, and
    names the DomainBed key of a value the rule does not accept.
    """
    rule_class.check_available()
    kwargs = {}
    for p in rule_class.params:
        key = domainbed_key(rule_class, p)
        value = hparams.get(key, p.default)
        if p.choices and value not in p.choices:
            raise ValueError(f"hparam {key} must be one of {list(p.choices)}, got {value!r}")
        kwargs[p.arg] = value
    return rule_class(**kwargs)


def check_switches(hparams: Mapping[str, Any], native_scale: str) -> tuple[str, str]:
    """(``surgery_batches``, ``surgery_reduction``) from ``hparams``, each checked."""
    batches = hparams.get("surgery_batches", "multi")
    if batches not in SURGERY_BATCHES:
        raise ValueError(f"hparam surgery_batches must be one of {SURGERY_BATCHES}, got {batches!r}")
    reduction = hparams.get("surgery_reduction", native_scale)
    if reduction not in SURGERY_REDUCTIONS:
        raise ValueError(f"hparam surgery_reduction must be one of {SURGERY_REDUCTIONS}, "
                         f"got {reduction!r}")
    return batches, reduction


def check_diagnostics_every(hparams: Mapping[str, Any]) -> int:
    """``surgery_diagnostics_every`` from ``hparams``: a positive integer."""
    every = hparams.get("surgery_diagnostics_every", DIAGNOSTICS_EVERY)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"hparam surgery_diagnostics_every must be a positive integer, got {every!r}")
    return every
