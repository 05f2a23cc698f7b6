"""Errors shared by the library and the command line, kept here so that a library module can raise them without
importing the command-line module."""
from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (bad config, missing file, unknown env id, broken checkpoint): the
    command line prints it as one line on stderr and exits non-zero (code 2), without a traceback."""
