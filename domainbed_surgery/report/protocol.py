"""What a table compared, read from its runs' ``args`` and ``hparams``.

:func:`protocol` states, per algorithm: steps, checkpoint frequency, batch size, backbone
and weights, pretrained, data augmentation, ``surgery_reduction``, the hparams that differ
between algorithms, the hparam samples and trials, and the cells whose runs mix protocols.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from ..plugin import locate
from .trials import AVG, SINGLE_DOMAIN_SUFFIX, with_arm_label

#: Protocol items, in the order the report states them.
PROTOCOL_ITEMS = ("steps", "checkpoint_freq", "batch_size", "backbone", "weights", "pretrained",
                  "data_augmentation", "surgery_reduction")
#: Items a DomainBed random search draws per (hparams_seed, trial_seed): values that vary
#: only between hparam samples are the search, not a mix of protocols.
SEARCHED_ITEMS = ("batch_size",)
#: hparams stated by the protocol items (``resnet18``/``resnet50_augmix`` through the weights),
#: so not listed again among the hparams that differ between algorithms.
PROTOCOL_HPARAMS = ("batch_size", "backbone", "pretrained", "data_augmentation",
                    "surgery_reduction", "resnet18", "resnet50_augmix")
#: Shown for an item the records do not hold.
NOT_RECORDED = "not recorded"


def hashable(value) -> str:
    """A value's JSON text: hparam values may be lists or dicts."""
    return json.dumps(value, sort_keys=True, default=str)


def runs(records) -> list[dict]:
    """One record per run (its first; a run's records share args and hparams)."""
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(hashable(r["args"]), r)
    return list(first.values())


def _dataset_class(name: str):
    """DomainBed's dataset class called ``name``, or None if unknown."""
    locate.ensure_importable()
    from domainbed import datasets  # noqa: PLC0415

    try:
        return datasets.get_dataset_class(name)
    except NotImplementedError:
        return None


def _domainbed_input_shape(cls) -> Optional[tuple]:
    """The input shape of a DomainBed dataset class, where knowable without its data."""
    from domainbed import datasets as dbd  # noqa: PLC0415

    shape = getattr(cls, "INPUT_SHAPE", None) or getattr(cls, "input_shape", None)
    if shape is None and issubclass(cls, (dbd.MultipleEnvironmentImageFolder, dbd.WILDSDataset)):
        shape = (3, 224, 224)
    if shape is None and issubclass(cls, dbd.MultipleEnvironmentMNIST):
        shape = (None, 28, 28)
    return tuple(shape) if shape is not None else None


def _domainbed_featurizer(cls, hparams: dict) -> tuple[str, str, Any]:
    """(backbone, weights, pretrained) of DomainBed's own ``networks.Featurizer`` (no ``backbone``)."""
    from ..extras.backbones.imagenet import domainbed_resnet  # noqa: PLC0415

    shape = _domainbed_input_shape(cls) if cls is not None else None
    if shape is None:
        return "DomainBed's default (input shape unknown)", NOT_RECORDED, NOT_RECORDED
    if len(shape) == 1:
        return "DomainBed's MLP", "random init", "n/a"
    if shape[1:3] == (28, 28):
        return "DomainBed's MNIST CNN", "random init", "n/a"
    if shape[1:3] == (32, 32):
        return "DomainBed's Wide ResNet", "random init", "n/a"
    if hparams.get("vit") and hparams.get("dinov2"):
        return "DomainBed's DinoV2", "torch.hub dinov2_vitb14", True
    arch = "resnet18" if hparams.get("resnet18") else "resnet50"
    if "resnet50_augmix" not in hparams:
        return f"DomainBed's ResNet ({arch})", f"{NOT_RECORDED} (no resnet50_augmix hparam)", True
    arch, weights = domainbed_resnet(hparams)
    return f"DomainBed's ResNet ({arch})", str(weights), True


def _featurizer(cls, hparams: dict) -> tuple[str, str, Any]:
    """(backbone, weights, pretrained) of a run, as its hparams determine them."""
    from ..extras.backbones.imagenet import weights_for  # noqa: PLC0415

    name = hparams.get("backbone")
    if name is None:
        return _domainbed_featurizer(cls, hparams)
    weights = weights_for(name, hparams)
    if weights is None:
        return name, "random init", "n/a"
    pretrained = bool(hparams.get("pretrained", True))
    return name, str(weights) if pretrained else "random init", pretrained


def _surgery_algorithms() -> set[str]:
    """Names of our surgery algorithms (the rule registry): their runs state ``surgery_reduction``."""
    from .. import rules  # noqa: PLC0415 - torch only when a protocol is computed

    return set(rules.REGISTRY)


def _base_algorithm(name: str) -> str:
    """``AgrSum`` for ``AgrSum-single`` (the control arm), else ``name``."""
    return name[:-len(SINGLE_DOMAIN_SUFFIX)] if name.endswith(SINGLE_DOMAIN_SUFFIX) else name


def run_protocol(record: dict) -> dict[str, Any]:
    """The :data:`PROTOCOL_ITEMS` of one run; ``steps``/``checkpoint_freq`` left unset
    (None) on the command line resolve to the dataset's ``N_STEPS``/``CHECKPOINT_FREQ``,
    as DomainBed's train.py does. ``surgery_reduction`` only for runs that have or need it."""
    args, hparams = record["args"], record.get("hparams") or {}
    cls = _dataset_class(args["dataset"])
    default = (lambda attr: getattr(cls, attr)) if cls is not None else (lambda attr: NOT_RECORDED)
    backbone, weights, pretrained = _featurizer(cls, hparams)
    out = {
        "steps": args.get("steps") or default("N_STEPS"),
        "checkpoint_freq": args.get("checkpoint_freq") or default("CHECKPOINT_FREQ"),
        "batch_size": hparams.get("batch_size", NOT_RECORDED),
        "backbone": backbone,
        "weights": weights,
        "pretrained": pretrained,
        "data_augmentation": hparams.get("data_augmentation", NOT_RECORDED),
    }
    if "surgery_reduction" in hparams:
        out["surgery_reduction"] = hparams["surgery_reduction"]
    elif _base_algorithm(args["algorithm"]) in _surgery_algorithms():
        out["surgery_reduction"] = NOT_RECORDED
    return out


def sorted_values(values: Iterable) -> list:
    """Distinct values, sorted: numbers numerically, then anything else by its text."""
    distinct = {hashable(v): v for v in values}.values()
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return sorted(distinct, key=lambda v: (0, v, "") if number(v) else (1, 0, str(v)))


def mixed(item: str, runs_: Sequence[dict]) -> list:
    """The values of ``item`` if ``runs_`` mix protocols for it, else [].

    A searched item (:data:`SEARCHED_ITEMS`) mixes only if one (hparams_seed, trial_seed)
    has several values; any other item if it has several values at all.
    """
    values = [r["protocol"][item] for r in runs_ if item in r["protocol"]]
    if len(sorted_values(values)) < 2:
        return []
    if item in SEARCHED_ITEMS:
        by_seed: dict[tuple, list] = {}
        for r in runs_:
            if item in r["protocol"]:
                by_seed.setdefault(_seeds(r), []).append(r["protocol"][item])
        if all(len(sorted_values(v)) == 1 for v in by_seed.values()):
            return []
    return sorted_values(values)


def _seeds(run: dict) -> tuple[int, int]:
    """(hparams_seed, trial_seed): what DomainBed seeds a random hparam draw with."""
    return run["args"].get("hparams_seed", 0), run["args"].get("trial_seed", 0)


def _differs(by_alg: dict[str, list[dict]], key: str) -> bool:
    """True if hparam ``key`` differs between two algorithms: on a (hparams_seed, trial_seed)
    both ran (a random search draws the same values for both), or, sharing none, at all."""
    per_alg = {}
    for alg, rs in by_alg.items():
        by_seed: dict[tuple, set] = {}
        for r in rs:
            by_seed.setdefault(_seeds(r), set()).add(hashable(r["hparams"][key]))
        per_alg[alg] = by_seed
    algs = list(per_alg)
    for i, a in enumerate(algs):
        for b in algs[i + 1:]:
            shared = per_alg[a].keys() & per_alg[b].keys()
            if shared and any(per_alg[a][s] != per_alg[b][s] for s in shared):
                return True
            if not shared and set().union(*per_alg[a].values()) != set().union(*per_alg[b].values()):
                return True
    return False


@dataclass
class Protocol:
    """What one table compared, read from its runs (see :func:`protocol`).

    ``settings``: item -> algorithm -> distinct values (an algorithm without the item is
    absent); ``searched``: items whose several values are a random search's draws;
    ``differing``: hparam -> algorithm -> distinct values, for hparams held by every
    algorithm that differ between them; ``own``: algorithm -> hparams only some algorithms
    have; ``hparams_seeds``/``trial_seeds``: algorithm -> distinct seeds; ``mixed``:
    (algorithm, target) -> {item: values} for cells whose runs mix protocols.
    """

    algorithms: list[str]
    n_runs: int
    settings: dict[str, dict[str, list]]
    searched: set[str]
    differing: dict[str, dict[str, list]]
    own: dict[str, list[str]]
    hparams_seeds: dict[str, list[int]]
    trial_seeds: dict[str, list[int]]
    mixed: dict[tuple[str, str], dict[str, list]]

    def differences(self) -> list[str]:
        """Items and hparams not the same for every algorithm (besides the method itself)."""
        items = [i for i, per_alg in self.settings.items()
                 if len({hashable(v) for v in per_alg.values()}) > 1]
        return items + list(self.differing)


def _settings(by_alg: dict[str, list[dict]]) -> tuple[dict[str, dict[str, list]], set[str]]:
    """(item -> algorithm -> distinct values, the searched items) over the runs."""
    settings: dict[str, dict[str, list]] = {}
    searched: set[str] = set()
    for item in PROTOCOL_ITEMS:
        per_alg = {a: sorted_values(r["protocol"][item] for r in rs if item in r["protocol"])
                   for a, rs in by_alg.items()}
        per_alg = {a: v for a, v in per_alg.items() if v}
        if per_alg:
            settings[item] = per_alg
        if (item in SEARCHED_ITEMS and any(len(v) > 1 for v in per_alg.values())
                and not any(mixed(item, rs) for rs in by_alg.values())):
            searched.add(item)
    return settings, searched


def _hparam_differences(by_alg: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(differing, own): hparams every run has that differ between algorithms (hparam ->
    algorithm -> values), and each algorithm's hparams that not every run has."""
    hparams = {a: [r.get("hparams") or {} for r in rs] for a, rs in by_alg.items()}
    keys = {a: set().union(*hs) - set(PROTOCOL_HPARAMS) for a, hs in hparams.items()}
    shared = {k for k in set.intersection(*keys.values())
              if all(k in h for hs in hparams.values() for h in hs)} if keys else set()
    differing = {k: {a: sorted_values(h[k] for h in hs) for a, hs in hparams.items()}
                 for k in sorted(shared) if len(by_alg) > 1 and _differs(by_alg, k)}
    own = {a: sorted(k - shared) for a, k in keys.items() if k - shared}
    return differing, own


def _mixed_cells(by_alg: dict[str, list[dict]], targets: Sequence[str]) -> dict:
    """(algorithm, target) -> {item: values} for the cells whose runs mix protocols."""
    cells_mixed = {}
    for alg, rs in by_alg.items():
        cells = {t: [r for r in rs if i in r["args"]["test_envs"]] for i, t in enumerate(targets)}
        cells[AVG] = rs
        for target, cell_runs in cells.items():
            found = {item: v for item in PROTOCOL_ITEMS if (v := mixed(item, cell_runs))}
            if found:
                cells_mixed[(alg, target)] = found
    return cells_mixed


def protocol(records, dataset: str, targets: Sequence[str],
             algorithms: Optional[Sequence[str]] = None) -> Protocol:
    """What the ``dataset`` table compared, from its runs' ``args`` and ``hparams``.

    ``targets`` are the table's target names by test env index; ``algorithms`` (default:
    all in the records) are the table's columns, control arms labelled ``<name>-single``.
    A cell's runs are those DomainBed's ``get_grouped_records`` gives it (every run
    holding out its domain); the Avg cell's are all the algorithm's runs.
    """
    by_alg: dict[str, list[dict]] = {}
    for r in runs(with_arm_label(r) for r in records):
        if r["args"]["dataset"] == dataset:
            by_alg.setdefault(r["args"]["algorithm"], []).append(
                dict(r, protocol=run_protocol(r)))
    if algorithms is not None:
        by_alg = {a: by_alg[a] for a in algorithms if a in by_alg}
    settings, searched = _settings(by_alg)
    differing, own = _hparam_differences(by_alg)
    return Protocol(
        algorithms=list(by_alg), n_runs=sum(len(rs) for rs in by_alg.values()),
        settings=settings, searched=searched, differing=differing, own=own,
        hparams_seeds={a: sorted({_seeds(r)[0] for r in rs}) for a, rs in by_alg.items()},
        trial_seeds={a: sorted({_seeds(r)[1] for r in rs}) for a, rs in by_alg.items()},
        mixed=_mixed_cells(by_alg, targets))


def format_value(value) -> str:
    """A protocol value as the report prints it (JSON-like booleans, %g numbers)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def mixed_note(items: dict[str, list]) -> str:
    """The note of a cell whose runs mix protocols: which items, which values."""
    return "mixed protocol: " + ", ".join(
        f"{item} {'/'.join(format_value(v) for v in values)}" for item, values in items.items())
