"""The ``cnnviz`` command line (import-light: building the parser imports no torch)."""

from cnnviz.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
