"""``python -m fvnce`` runs the command line."""

from .cli import _entry

_entry()
