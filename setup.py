"""Packaging glue that pyproject.toml cannot express: ship ``configs/models/*.yaml`` (the model
presets, edited at the repository root) inside the package as ``pipelines/zoo_presets/``.

``packages.find`` only discovers real directories, so the mapped package is added to build_py
here; everything else is configured in pyproject.toml. ``pipelines.zoo`` reads
``pipelines/zoo_presets`` when installed and ``configs/models`` in a source tree.
"""
from setuptools import setup
from setuptools.command.build_py import build_py

PRESETS_PACKAGE = "pipelines.zoo_presets"
PRESETS_DIR = "configs/models"


class BuildPyWithPresets(build_py):
    def finalize_options(self) -> None:
        super().finalize_options()
        if PRESETS_PACKAGE not in self.packages:
            self.packages.append(PRESETS_PACKAGE)
        self.package_dir[PRESETS_PACKAGE] = PRESETS_DIR
        self.package_data.setdefault(PRESETS_PACKAGE, ["*.yaml"])


setup(cmdclass={"build_py": BuildPyWithPresets})
