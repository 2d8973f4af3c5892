"""The ``cnnviz`` command line (import-light: building the parser imports no torch).

:mod:`~cnnviz.cli.parser` builds the parser, :mod:`~cnnviz.cli.main` runs a command and turns
its outcome into an exit code (:mod:`~cnnviz.cli.exit_codes`); the handlers live in
:mod:`~cnnviz.cli.commands` and :mod:`~cnnviz.cli.evaluate_commands`, and the helpers they
share in :mod:`~cnnviz.cli.shared`.
"""

from cnnviz.cli.exit_codes import ExitCode
from cnnviz.cli.main import main, run
from cnnviz.cli.parser import build_parser

__all__ = ["ExitCode", "build_parser", "main", "run"]
