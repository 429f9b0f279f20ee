"""Intra- vs inter-domain per-sample gradient similarity during ERM training (paper Fig. 2).

The library of ``python -m domainbed_surgery.scripts.gradient_similarity``, which
reproduces Sec. 4.3 of Mansilla et al. (ICCV 2021) on any DomainBed dataset/backbone::

    python -m domainbed_surgery.scripts.gradient_similarity --dataset RotatedDigits \\
        --data_dir /work/shared/data --steps 200 --every 20 --per_domain 8 --output_dir out

For each choice of held-out domain(s) it trains DomainBed's ERM as ``train.py`` does
(same in/out split of every environment, ``InfiniteDataLoader`` minibatches from each
source domain, hparams from ``default_hparams('ERM', dataset)`` updated by ``--hparams``)
and, before update ``step`` for every multiple of ``--every`` (and after the last update),
draws ``--per_domain`` samples of ONE class from each source domain's training split (the
same class for all domains, drawn uniformly among the classes all source domains have),
computes every sample's loss gradient w.r.t. all trainable parameters with
``torch.func`` in eval mode (see :mod:`domainbed_surgery.analysis.per_sample` for why) and
records the mean cosine over same-domain pairs (intra) and cross-domain pairs (inter).
The measurement batches come from the training split and go through the dataset's
training transform (augmentation included, if the dataset has one).

``--test_envs``: each value is one choice, a comma-separated list of held-out
environments (``--test_envs 0 1 2`` = three leave-one-out runs, ``--test_envs 0,1`` = one
run holding out 0 and 1); the option may be repeated. Default: every leave-one-out choice.

Writes ``gradient_similarity.csv`` (one row per choice and measured step) and
``gradient_similarity.png``/``.pdf`` (one panel per choice, intra in red, inter in blue)
to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Optional

import numpy as np
import torch

from .. import dataset_info
from ..report.figures import save_figure
from ..report.format import markdown_table

CSV_NAME = "gradient_similarity.csv"
FIG_NAME = "gradient_similarity"
COLUMNS = ["dataset", "test_envs", "source_domains", "step", "class", "intra", "inter",
           "n_intra", "n_inter", "n_per_domain", "train_loss"]


def parse_test_env_choices(values: Optional[list[list[str]]], n_envs: int) -> list[tuple[int, ...]]:
    """``--test_envs`` values -> held-out tuples; default: every leave-one-out choice."""
    if not values:
        return [(i,) for i in range(n_envs)]
    choices = []
    for group in values:
        for token in group:
            envs = tuple(sorted({int(t) for t in token.split(",") if t.strip()}))
            if not envs or any(e < 0 or e >= n_envs for e in envs):
                raise ValueError(f"--test_envs {token!r}: environments are 0..{n_envs - 1}")
            if len(envs) >= n_envs - 1:
                raise ValueError(f"--test_envs {token!r} leaves fewer than 2 source domains: "
                                 "there would be no inter-domain pair")
            if envs not in choices:
                choices.append(envs)
    return choices


def dataset_labels(ds) -> torch.Tensor:
    """All labels of a (DomainBed) dataset without loading images where avoidable."""
    from domainbed.lib import misc  # noqa: PLC0415

    if isinstance(ds, misc._SplitDataset):  # noqa: SLF001 - what split_dataset returns
        return dataset_labels(ds.underlying_dataset)[torch.as_tensor(ds.keys, dtype=torch.long)]
    if isinstance(ds, torch.utils.data.Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[1].reshape(-1).long()
    targets = getattr(ds, "targets", None)  # torchvision ImageFolder (PACS, VLCS...)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.tensor([int(y) for _, y in ds], dtype=torch.long)


def gather(ds, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A minibatch ``(x, y)`` of ``ds[i]`` for ``i`` in ``indices``."""
    items = [ds[int(i)] for i in indices]
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.as_tensor([int(y) for _, y in items], dtype=torch.long))


def run_choice(args: argparse.Namespace, hparams: dict, test_envs: tuple[int, ...],
               device: str) -> list[dict]:
    """Train ERM with ``test_envs`` held out; return one CSV row per measurement."""
    from domainbed import algorithms  # noqa: PLC0415
    from domainbed.lib import misc  # noqa: PLC0415
    from domainbed.lib.fast_data_loader import InfiniteDataLoader  # noqa: PLC0415

    from .per_sample import measure_similarity  # noqa: PLC0415
    from .similarity import one_class_indices  # noqa: PLC0415

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dataset = dataset_info.dataset_class(args.dataset)(args.data_dir, list(test_envs), hparams)
    names = env_names(args.dataset, len(dataset))
    in_splits = []
    for env_i, env in enumerate(dataset):  # the split train.py makes
        _, in_ = misc.split_dataset(env, int(len(env) * args.holdout_fraction),
                                    misc.seed_hash(args.trial_seed, env_i))
        in_splits.append(in_)
    sources = [i for i in range(len(dataset)) if i not in test_envs]
    loaders = [InfiniteDataLoader(
        dataset=in_splits[i],
        weights=misc.make_weights_for_balanced_classes(in_splits[i])
        if hparams["class_balanced"] else None,
        batch_size=hparams["batch_size"], num_workers=dataset.N_WORKERS) for i in sources]
    algorithm = algorithms.ERM(dataset.input_shape, dataset.num_classes, len(sources), hparams)
    algorithm.to(device)
    labels = [dataset_labels(in_splits[i]) for i in sources]
    # Own generator: the measurement's choice of samples does not depend on training.
    generator = torch.Generator().manual_seed(misc.seed_hash(args.seed, "gradient_similarity",
                                                             test_envs))
    source_names = "+".join(names[i] for i in sources)
    test_names = "+".join(names[i] for i in test_envs)
    print(f"[{args.dataset}] train on {source_names}, hold out {test_names}: "
          f"{args.steps} ERM steps, measuring every {args.every}", flush=True)

    rows, losses, minibatches = [], [], zip(*loaders)
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            cls, picks = one_class_indices(labels, args.per_domain, generator)
            batches = [tuple(t.to(device) for t in gather(in_splits[d], ix))
                       for d, ix in zip(sources, picks)]
            stats = measure_similarity(algorithm.network, batches, chunk_size=args.chunk_size)
            rows.append({
                "dataset": args.dataset, "test_envs": ",".join(map(str, test_envs)),
                "source_domains": source_names, "step": step, "class": cls,
                "intra": stats.intra, "inter": stats.inter,
                "n_intra": stats.n_intra, "n_inter": stats.n_inter,
                "n_per_domain": "/".join(str(len(ix)) for ix in picks),
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
            })
            losses = []
            print(f"  step {step:5d}  class {cls}  intra {stats.intra:+.4f}  "
                  f"inter {stats.inter:+.4f}  ({time.time() - start:.1f}s)", flush=True)
        if step < args.steps:
            batch = [(x.to(device), y.to(device)) for x, y in next(minibatches)]
            losses.append(algorithm.update(batch)["loss"])
    return rows


def env_names(dataset: str, n_envs: int) -> list[str]:
    """The dataset's environment names (DomainBed's ``ENVIRONMENTS``), else ``env<i>``."""
    names = dataset_info.environments(dataset)
    return names if names is not None and len(names) == n_envs else [f"env{i}" for i in range(n_envs)]


def plot(frame, output_stem: str) -> list[str]:
    """Fig. 2 layout: one panel per source-domain choice, intra (red) and inter (blue) over step."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = list(frame.groupby(["dataset", "source_domains"], sort=False))
    ncols = min(4, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, 4.0 * ncols), 3.2 * nrows + 0.5),
                             squeeze=False, sharey=True)
    frame = frame.astype({"test_envs": str})
    for ax, ((dataset, sources), g) in zip(axes.flat, groups):
        g = g.sort_values("step")
        ax.plot(g["step"], g["intra"], color="tab:red", marker="o", ms=3, label="intra-domain")
        ax.plot(g["step"], g["inter"], color="tab:blue", marker="o", ms=3, label="inter-domain")
        if min(g["intra"].min(), g["inter"].min()) < 0.1:  # conflict: mark the zero line
            ax.axhline(0.0, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{dataset}: sources {sources.replace('+', ', ')}\n"
                     f"(held-out env {g['test_envs'].iloc[0]})", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean gradient cosine")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Per-sample gradient cosine during ERM training\n"
                 "(one class per measurement; intra- vs inter-domain pairs)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, output_stem)


def run(args) -> int:
    """Every held-out choice of ``args`` (the CLI's namespace): train, measure, write the
    CSV and the figure after each choice; return the exit status. The caller has made
    DomainBed importable and registered our names (``domainbed_surgery.register()``)."""
    import pandas as pd  # noqa: PLC0415

    from domainbed import hparams_registry  # noqa: PLC0415

    hparams = hparams_registry.default_hparams("ERM", args.dataset)
    if args.hparams:
        hparams.update(json.loads(args.hparams))
    n_envs = len(dataset_info.environments_or_raise(args.dataset))
    try:
        choices = parse_test_env_choices(args.test_envs, n_envs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    csv_path = os.path.join(args.output_dir, CSV_NAME)
    for test_envs in choices:
        rows += run_choice(args, hparams, test_envs, device)
        # Rewritten after every choice: a long run interrupted keeps what it finished.
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame.to_csv(csv_path, index=False)
        figures = plot(frame, os.path.join(args.output_dir, FIG_NAME))
    with open(os.path.join(args.output_dir, "gradient_similarity_args.json"), "w") as f:
        json.dump({"args": vars(args), "hparams": hparams, "device": device}, f, indent=2,
                  default=str)
    written = write_summary(frame, args.output_dir)
    print(f"wrote {csv_path}, " + ", ".join(figures + written))
    return 0


SUMMARY_NAME = "gradient_similarity_summary.md"


def summarize(frame):
    """Per held-out choice: steps measured, mean intra- and inter-domain cosine over them,
    their difference, and the fraction of measured steps where intra > inter."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for (dataset, test_envs, sources), g in frame.groupby(
            ["dataset", "test_envs", "source_domains"], sort=False):
        rows.append({"dataset": dataset, "held_out": str(test_envs), "sources": sources,
                     "steps": len(g), "intra": g["intra"].mean(), "inter": g["inter"].mean(),
                     "intra_minus_inter": (g["intra"] - g["inter"]).mean(),
                     "intra_above": float((g["intra"] > g["inter"]).mean())})
    return pd.DataFrame(rows)


SUMMARY_HEADER = ["dataset", "held out", "sources", "steps measured", "intra", "inter",
                  "intra - inter", "steps with intra > inter"]


def summary_markdown(summary) -> str:
    """The :func:`summarize` table as Markdown (cosines to 3 decimals, numbers right-aligned)."""
    rows = [[r.dataset, r.held_out, r.sources.replace("+", ", "), r.steps, f"{r.intra:.3f}",
             f"{r.inter:.3f}", f"{r.intra_minus_inter:+.3f}", f"{r.intra_above:.0%}"]
            for r in summary.itertuples(index=False)]
    return markdown_table(rows, SUMMARY_HEADER, align=["", "", ""] + ["r"] * 5)


def write_summary(frame, output_dir: str) -> list[str]:
    """Print the per-choice summary and write it as Markdown; return the path written."""
    summary = summarize(frame)
    print("mean over measured steps:\n" + summary.to_string(index=False, float_format="%.4f"))
    path = os.path.join(output_dir, SUMMARY_NAME)
    with open(path, "w") as f:
        f.write(summary_markdown(summary))
    return [path]


def redraw(csv_path: str, output_dir: str) -> int:
    """The figure and the summary again from a CSV this module wrote (no training)."""
    import pandas as pd  # noqa: PLC0415

    frame = pd.read_csv(csv_path, dtype={"test_envs": str})
    os.makedirs(output_dir, exist_ok=True)
    written = plot(frame, os.path.join(output_dir, FIG_NAME)) + write_summary(frame, output_dir)
    print("wrote " + ", ".join(written))
    return 0
