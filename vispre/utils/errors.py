"""Errors a user can fix, and the exit statuses of the ``vispre`` command.

A ``UserError`` (a bad recipe or override, a missing or corrupt file, an output directory in use) is
printed by ``vispre`` as one or a few lines that name the file and field, with exit status 2 and no
traceback (``vispre -v`` shows it). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a data problem the command reports (unreadable shards) or an unexpected error
EXIT_USER_ERROR = 2  # what argparse uses for bad arguments: fix the input and run again
EXIT_NONFINITE = 3  # training stopped on a non-finite loss or gradient (train.nonfinite / max_nonfinite_skips)
EXIT_PREEMPTED = 75  # SIGTERM / SIGINT / SIGUSR1: a checkpoint was written, resume with --resume (EX_TEMPFAIL)


class UserError(Exception):
    """An error in the user's input: the message says which file and field, and what to do."""


class ValueCheckError(UserError, ValueError):
    """A config value of the right type but out of range (``train.steps: must be >= 1, got 0``)."""
