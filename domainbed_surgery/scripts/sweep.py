"""``python -m domainbed_surgery.scripts.sweep``: DomainBed's ``sweep`` script (same arguments), with our algorithms registered."""

from ._forward import forward


def main(argv=None):
    forward("domainbed.scripts.sweep", argv)


if __name__ == "__main__":
    main()
