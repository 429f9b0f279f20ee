"""``python -m domainbed_surgery.scripts.train``: DomainBed's ``train`` script (same arguments), with our algorithms registered."""

from ._forward import forward


def main(argv=None):
    forward("domainbed.scripts.train", argv)


if __name__ == "__main__":
    main()
