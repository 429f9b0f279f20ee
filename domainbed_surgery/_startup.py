"""Imported at interpreter start by ``domainbed_surgery.pth``: arms the lazy hook.

Set ``DOMAINBED_SURGERY_AUTOREGISTER=0`` to turn it off; then call
``domainbed_surgery.register()`` yourself. Nothing heavy is imported here.
"""

import os

ENV_VAR = "DOMAINBED_SURGERY_AUTOREGISTER"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


if enabled():
    try:
        from domainbed_surgery.plugin import import_hook

        import_hook.install()
    except Exception as exc:  # a broken hook must never stop Python from starting
        import sys

        print(f"domainbed_surgery: start-up hook failed: {exc!r}", file=sys.stderr)
