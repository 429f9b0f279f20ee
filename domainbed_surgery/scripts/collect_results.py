"""``python -m domainbed_surgery.scripts.collect_results``: DomainBed's ``collect_results`` script (same arguments), with our algorithms registered.

Two differences (see :mod:`domainbed_surgery.report.records`): a ``results.jsonl`` line
that is not valid JSON (a job killed while writing) is skipped with a warning naming the
file and line, where DomainBed's loader stops with a bare ``JSONDecodeError``; a run that
holds out an environment its dataset does not have (``--test_envs 7`` on VLCS) is skipped
with a warning naming its folder, where DomainBed stops with a bare ``KeyError``.
"""

from ..report import records
from ..plugin.registration import register
from ..plugin.forward import forward


def main(argv=None):
    register()
    records.install()
    forward("domainbed.scripts.collect_results", argv)


if __name__ == "__main__":
    main()
