"""``python -m domainbed_surgery.scripts.collect_results``: DomainBed's ``collect_results`` script (same arguments), with our algorithms registered.

One difference: a ``results.jsonl`` line that is not valid JSON (a job killed while
writing) is skipped with a warning naming the file and line, where DomainBed's loader
stops with a bare ``JSONDecodeError`` (see :mod:`domainbed_surgery.report.records`).
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
