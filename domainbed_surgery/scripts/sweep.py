"""``python -m domainbed_surgery.scripts.sweep``: DomainBed's ``sweep`` (same arguments), registered.

Adds ``--checkpoint_freq N``, which DomainBed's sweep lacks (the paper validates every
20 steps): it is appended to every job's ``python -m domainbed.scripts.train`` command,
so jobs and their output folders stay DomainBed's.
"""

from __future__ import annotations

import argparse
import sys

from ..registration import register
from ._forward import forward


def with_checkpoint_freq(launcher, checkpoint_freq: int):
    """A launcher that runs ``launcher`` on the commands with ``--checkpoint_freq`` added."""
    def launch(commands):
        return launcher([f"{cmd} --checkpoint_freq {checkpoint_freq}" for cmd in commands])

    return launch


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    parser.add_argument("--command_launcher", type=str, default=None)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.command_launcher is not None:
        rest += ["--command_launcher", ours.command_launcher]
    if ours.checkpoint_freq is not None:
        if ours.checkpoint_freq < 1:
            raise SystemExit("--checkpoint_freq must be a positive number of steps")
        register()
        from domainbed import command_launchers  # noqa: PLC0415

        name = ours.command_launcher
        if name not in command_launchers.REGISTRY:
            raise SystemExit(f"unknown --command_launcher {name!r}; "
                             f"choose from {sorted(command_launchers.REGISTRY)}")
        command_launchers.REGISTRY[name] = with_checkpoint_freq(
            command_launchers.REGISTRY[name], ours.checkpoint_freq)
    forward("domainbed.scripts.sweep", rest)


if __name__ == "__main__":
    main()
