"""Only here to ship ``domainbed_surgery.pth`` (the start-up hook); metadata is in setup.cfg.

A regular install copies the file to the wheel's root (site-packages). An editable
install (``pip install -e .``) writes it beside setuptools' own editable ``.pth``.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "domainbed_surgery.pth"
PTH_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH)


class BuildPyWithPth(build_py):
    """Also copy the .pth file to the root of the wheel, i.e. into site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            shutil.copy(PTH_PATH, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [os.path.join(self.build_lib, PTH)]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy to add our .pth to the editable wheel."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self._strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        with open(PTH_PATH, "rb") as f:
            wheel.writestr(PTH, f.read())


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWithPth(super()._select_strategy(name, tag, build_lib))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
