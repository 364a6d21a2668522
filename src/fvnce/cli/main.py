"""``fvnce`` (also ``python -m fvnce``): parse, run the subcommand, turn errors into one line.

Bad input ends with a one-line ``fvnce: error: ...`` on stderr and exit code 2; an
interrupted training run exits with 130 after saving a checkpoint.
"""

from __future__ import annotations

import shlex
import sys

from ..distributed import exit_process, flush_and_exit, is_active
from ..errors import FvnceError
from ..train import TrainingInterrupted
from ..version import __version__
from .parser import EXIT_BAD_INPUT, EXIT_INTERRUPTED, build_parser

__all__ = ["entry", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    # the subcommands import the data, run and report layers: not needed for --version or --help
    from .commands import COMMANDS

    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        print(f"fvnce: {exc}", file=sys.stderr)
        if exc.run_dir is not None:
            print(f"fvnce: to continue: fvnce train --out {shlex.quote(str(exc.run_dir))} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FvnceError as exc:
        print(f"fvnce: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fvnce: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:  # disk full, permissions: still one line
        print(f"fvnce: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def entry() -> None:  # pragma: no cover - console script wrapper
    """Run :func:`main` and leave with ``os._exit`` after flushing: every file fvnce writes
    is written atomically and closed by then, and the interpreter's teardown after
    torch (and torch._dynamo, which every torch optimiser imports) took about 1 s of each
    command.  Under torchrun the process group is destroyed first."""
    code = main()
    if is_active():
        exit_process(code)  # destroy the process group, flush, os._exit
    flush_and_exit(code)
