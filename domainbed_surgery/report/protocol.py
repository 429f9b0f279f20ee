"""What a table compared, read from its runs: args, hparams and the facts training recorded.

:func:`protocol` states, per algorithm: steps, checkpoint frequency, batch size, the
featurizer (backbone, weights, pretrained, frozen prefix, share of its parameters
trained), data augmentation, ``surgery_reduction``, the hparams that differ between
algorithms, the hparam samples and trials, and the cells whose runs mix protocols.
The featurizer items are read from the run's ``protocol.json`` (written by training,
:mod:`domainbed_surgery.run_facts`; the loader puts it on each record under
:data:`~.records.FACTS_KEY`), never re-derived here: a run without it says
:data:`NOT_RECORDED`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from .. import dataset_info
from .records import FACTS_KEY
from .trials import AVG, with_arm_label

#: Protocol items, in the order the report states them.
PROTOCOL_ITEMS = ("steps", "checkpoint_freq", "batch_size", "backbone", "weights", "pretrained",
                  "frozen_prefix", "trained_share", "data_augmentation", "surgery_reduction")
#: Items a DomainBed random search draws per (hparams_seed, trial_seed): values that vary
#: only between hparam samples are the search, not a mix of protocols.
SEARCHED_ITEMS = ("batch_size",)
#: hparam -> the protocol item that states it: not listed again among the hparams that
#: differ between algorithms when every run holding the hparam has that item recorded.
PROTOCOL_HPARAMS = {"batch_size": "batch_size", "backbone": "backbone",
                    "pretrained": "pretrained", "data_augmentation": "data_augmentation",
                    "surgery_reduction": "surgery_reduction", "resnet18": "weights",
                    "resnet50_augmix": "weights", "frozen_prefix": "frozen_prefix"}
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


def _frozen_prefix(featurizer: dict, hparams: dict) -> Optional[str]:
    """The frozen prefix the featurizer recorded ("stem..blocks.5", "none"); unrecorded
    if the run asked for one (hparam) and recorded nothing; None if not applicable."""
    if "frozen_prefix" in featurizer:
        prefix = featurizer["frozen_prefix"]
        return f"stem..{prefix}" if prefix else "none"
    if not featurizer and hparams.get("frozen_prefix") is not None:
        return NOT_RECORDED
    return None


def _trained_share(featurizer: dict) -> str:
    """"30.2%": the featurizer's trained parameters over all of them, as recorded."""
    trained, total = featurizer.get("trained_parameters"), featurizer.get("featurizer_parameters")
    if not isinstance(trained, int) or not isinstance(total, int) or total <= 0:
        return NOT_RECORDED
    return f"{trained / total:.1%}"


def run_protocol(record: dict) -> dict[str, Any]:
    """The :data:`PROTOCOL_ITEMS` of one run.

    ``steps``/``checkpoint_freq`` left unset (None) on the command line resolve to the
    dataset's ``N_STEPS``/``CHECKPOINT_FREQ``, as DomainBed's train.py does. The featurizer
    items come from the run's recorded facts. ``frozen_prefix`` only for runs whose
    featurizer has one; ``surgery_reduction`` (recorded, else from hparams) only for runs
    that have it or hold other ``surgery_*`` hparams (a surgery run that did not record it).
    """
    args, hparams = record["args"], record.get("hparams") or {}
    facts = record.get(FACTS_KEY) or {}
    featurizer = facts.get("featurizer") or {}
    defaults = dataset_info.training_defaults(args["dataset"]) or {}
    out = {
        "steps": args.get("steps") or defaults.get("steps", NOT_RECORDED),
        "checkpoint_freq": args.get("checkpoint_freq") or defaults.get("checkpoint_freq",
                                                                        NOT_RECORDED),
        "batch_size": hparams.get("batch_size", NOT_RECORDED),
        "backbone": featurizer.get("backbone", NOT_RECORDED),
        "weights": featurizer.get("weights", NOT_RECORDED),
        "pretrained": featurizer.get("pretrained", NOT_RECORDED),
    }
    prefix = _frozen_prefix(featurizer, hparams)
    if prefix is not None:
        out["frozen_prefix"] = prefix
    out["trained_share"] = _trained_share(featurizer)
    out["data_augmentation"] = hparams.get("data_augmentation", NOT_RECORDED)
    recorded = (facts.get("algorithm") or {}).get("surgery_reduction")
    if recorded is not None:
        out["surgery_reduction"] = recorded
    elif "surgery_reduction" in hparams:
        out["surgery_reduction"] = hparams["surgery_reduction"]
    elif facts.get("algorithm") or any(k.startswith("surgery_") for k in hparams):
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


def _stated_hparams(by_alg: dict[str, list[dict]]) -> set[str]:
    """The hparams of :data:`PROTOCOL_HPARAMS` that the items state: every run holding the
    hparam has its item recorded (else a difference in it must show among the hparams)."""
    every = [r for rs in by_alg.values() for r in rs]
    return {h for h, item in PROTOCOL_HPARAMS.items()
            if all(r["protocol"].get(item, NOT_RECORDED) != NOT_RECORDED
                   for r in every if h in (r.get("hparams") or {}))}


def _hparam_differences(by_alg: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(differing, own): hparams every run has that differ between algorithms (hparam ->
    algorithm -> values), and each algorithm's hparams that not every run has."""
    hparams = {a: [r.get("hparams") or {} for r in rs] for a, rs in by_alg.items()}
    stated = _stated_hparams(by_alg)
    keys = {a: set().union(*hs) - stated for a, hs in hparams.items()}
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
    """What the ``dataset`` table compared, from its runs' args, hparams and facts.

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
