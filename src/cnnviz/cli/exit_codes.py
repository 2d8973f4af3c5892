"""The exit codes of the ``cnnviz`` command, by intent (the README and docs/errors.md list them).

Only :class:`ExitCode.USAGE` and :class:`ExitCode.WEIGHTS` come from errors: a
:class:`~cnnviz.errors.CnnvizError` carries its own ``exit_code`` (2, or 3 for
:class:`~cnnviz.errors.WeightsUnavailableError`); any other exception is
:class:`ExitCode.INTERNAL`, a bug in cnnviz.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What the process exit status of ``cnnviz`` means."""

    OK = 0
    """Everything asked for was written."""
    PARTIAL = 1
    """The run finished, but some inputs of this run failed (on stderr and in the manifest)."""
    USAGE = 2
    """Bad input or usage: one line ``cnnviz: error: …`` names the problem and the remedy."""
    WEIGHTS = 3
    """Pretrained weights are needed but not available offline."""
    INTERNAL = 70
    """An unexpected exception, a bug in cnnviz (``--debug`` shows the traceback); EX_SOFTWARE."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (128 + SIGINT); every file already written is complete."""
    PIPE_CLOSED = 141
    """The reader of standard output went away (``cnnviz layers M | head``): 128 + SIGPIPE, as
    a shell tool killed by it would exit; nothing more is printed."""
    TERMINATED = 143
    """Stopped by SIGTERM (128 + 15, the shell's convention); every file written is complete."""
