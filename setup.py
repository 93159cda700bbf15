"""Which packages the wheel holds; everything else about the project is in pyproject.toml.

Every package under cai/ is discovered (find_packages), so a new subpackage ships
without an edit here; constitutions/ and prompts/ (top level, so users find them)
ship as cai.constitutions and cai.prompts, mapped in pyproject's package-dir.
cai/backends/csrc holds C++ source, not Python; it is named as a data-only package so
setuptools ships it without its "Package would be ignored" warning block on every install.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["cai", "cai.*"]), "cai.backends.csrc", "cai.constitutions", "cai.prompts"])
