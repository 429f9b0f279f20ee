"""``python -m domainbed_surgery.scripts.collect_results``: DomainBed's ``collect_results`` script (same arguments), with our algorithms registered."""

from ._forward import forward


def main(argv=None):
    forward("domainbed.scripts.collect_results", argv)


if __name__ == "__main__":
    main()
