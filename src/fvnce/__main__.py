"""``python -m fvnce`` runs the command line."""

from .cli.main import entry

entry()
