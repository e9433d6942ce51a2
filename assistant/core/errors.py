"""The base class of the project's expected errors: bad input a user can fix, told in one line by the CLI."""

from __future__ import annotations


class AssistantError(Exception):
    """An expected failure (a bad file, config or catalog): its message names the thing and what to do about it.

    The command line prints it as one line and exits with status 2; anything else is a bug and keeps its traceback.
    """
