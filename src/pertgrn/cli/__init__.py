"""Command-line interface: ``pertgrn demo``, ``fit``, ``predict`` and ``evaluate``, for batch runs on clusters.

Results go to stdout; log messages and progress bars go to stderr. The parser imports nothing
heavy, so ``pertgrn --help`` and ``pertgrn --version`` answer at once; a command imports what it
needs. Exit status: 0 success; 2 bad usage or input (argparse, the command line's own checks, and
the ``ValueError`` / ``KeyError`` / ``TypeError`` that pertgrn raises when it rejects an input),
with one line ``pertgrn: error: …`` on stderr; 1 any other failure, with a traceback and a last
line ``pertgrn: unexpected error: …``. A command writes its files at the end, all at once: a run
that fails leaves none behind.
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pertgrn.cli import _demo as _demo_command
from pertgrn.cli import _evaluate as _evaluate_command
from pertgrn.cli import _fit as _fit_command
from pertgrn.cli import _predict as _predict_command
from pertgrn.cli._options import UsageError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]

#: Exit status of a run that did what it was asked.
EXIT_OK = 0
#: Exit status of a run that failed for a reason nobody checked for (a bug, a full disk, a killed worker).
EXIT_FAILURE = 1
#: Exit status of a run given bad usage or input; it wrote nothing.
EXIT_USAGE = 2

# the commands, looked up here when the parser is built (tests replace them)
_demo = _demo_command.run
_fit = _fit_command.run
_predict = _predict_command.run
_evaluate = _evaluate_command.run

EPILOG = """\
commands print their results on stdout; log messages and progress bars go to stderr.

exit status (for scheduler logs):
  0  success
  2  bad usage or input: one line 'pertgrn: error: ...' on stderr, no file written
     (wrong options, missing files or keys, arguments pertgrn rejects)
  1  unexpected failure: a traceback and 'pertgrn: unexpected error: ...' on stderr,
     no file written

`pertgrn COMMAND --help` describes each command.
"""

VERBOSE_HELP = "log every step's summary (verbosity 'info')"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class _Parser(argparse.ArgumentParser):
    """argparse with pertgrn's one-line error format (``pertgrn: error: …``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(EXIT_USAGE, f"pertgrn: error: {command}{message}\n")


def _configure_logging(verbose: bool) -> None:
    # pertgrn's own logger prints to stderr at settings.verbosity; the root logger is left alone, so the
    # lines of Lightning and scvi-tools (which print through their own handlers) are not printed twice
    from pertgrn import settings

    settings.verbosity = "info" if verbose else None


def build_parser() -> argparse.ArgumentParser:
    """The ``pertgrn`` argument parser."""
    from pertgrn import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="pertgrn",
        description="Gene regulatory networks and perturbation-response models for single-cell CRISPR screens.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"pertgrn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = {"demo": _demo_command, "fit": _fit_command, "predict": _predict_command, "evaluate": _evaluate_command}
    functions = {"demo": _demo, "fit": _fit, "predict": _predict, "evaluate": _evaluate}
    for name, module in commands.items():
        command = module.add_parser(sub, formatter)
        # -v after the command too (`pertgrn fit -v ...`); absent there, the top level's value stands
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        command.set_defaults(func=functions[name])
    return parser


def _one_line(error: BaseException) -> str:
    # KeyError's str() is the repr of its argument: show the message itself
    text = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    return " ".join(str(text).split())


def _rejected_by_pertgrn(error: BaseException) -> bool:
    """Whether ``error`` is a check of pertgrn's: a ``raise`` statement in pertgrn's code (not the CLI's).

    pertgrn validates its inputs before it changes anything and raises ``ValueError``, ``KeyError`` or
    ``TypeError`` saying what it expected; the same types raised anywhere else (a library, or a
    lookup in pertgrn that failed by accident) are unexpected failures.
    """
    if not isinstance(error, ValueError | KeyError | TypeError) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    filename = Path(frame.tb_frame.f_code.co_filename).resolve()
    if _PACKAGE_DIR not in filename.parents or Path(__file__).resolve().parent in filename.parents:
        return False
    return linecache.getline(str(filename), frame.tb_lineno).lstrip().startswith("raise")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pertgrn`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _configure_logging(args.verbose)
    # stdout carries results only: whatever a library prints while a command runs (scvi-tools draws its
    # training progress bar on stdout) goes to stderr, beside the log messages
    results = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args, stdout=results)
    except UsageError as error:
        print(f"pertgrn: error: {args.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        if _rejected_by_pertgrn(error):
            print(f"pertgrn: error: {args.command}: {_one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        traceback.print_exc(file=sys.stderr)
        print(f"pertgrn: unexpected error: {args.command}: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
