"""``python -m cnnviz.cli``: the same as the ``cnnviz`` command."""

from cnnviz.cli.main import run

run()
