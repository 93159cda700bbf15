"""Exceptions. Lower layers raise these; only the CLI turns them into exit codes."""

from __future__ import annotations


class CaiError(Exception):
    """Base class for every error cai raises on purpose."""

    exit_code = 1


class UserInputError(CaiError):
    """Bad input the user can fix (a file, a flag, a config). One line, with the fix.

    The CLI prints it without a traceback and exits with code 2.
    """

    exit_code = 2


class ConstitutionError(UserInputError):
    """A malformed constitution file."""


class TemplateError(UserInputError):
    """A missing, malformed or unsafe prompt template."""


class DataError(UserInputError):
    """A malformed prompt set or dataset directory."""


class ModelSpecError(UserInputError):
    """A model spec that resolves to nothing loadable."""
