"""The ``fvnce`` command line (also ``python -m fvnce``).

Subcommands: ``train``, ``evaluate``, ``score``, ``sample``, ``poc``, ``report``.
Bad input ends with a one-line ``fvnce: error: ...`` on stderr and exit code 2;
an interrupted training run exits with 130 after saving a checkpoint.  Nothing runs at
import time.

* :mod:`~fvnce.cli.parser` -- the argument parser (choices from the registries);
* :mod:`~fvnce.cli.options` -- flags turned into configurations;
* :mod:`~fvnce.cli.resume` -- which flags ``--resume`` compares with the saved run;
* :mod:`~fvnce.cli.text` -- what the commands print;
* :mod:`~fvnce.cli.commands` -- the subcommands;
* :mod:`~fvnce.cli.train_line` -- a run's configuration as the ``fvnce train`` line;
* :mod:`~fvnce.cli.main` -- :func:`main` and the console entry point.
"""

from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
