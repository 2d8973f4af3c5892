"""``python -m cnnviz …`` is the ``cnnviz`` command (and what ``torchrun -m cnnviz`` runs)."""

from cnnviz.cli.main import run

if __name__ == "__main__":
    run()
