"""`cvt-nas` command line: argument parsing and dispatch only.

Each subcommand lives in `cvt_nas.commands.<name>` with ``add_parser(subparsers)`` and
``run(args) -> int``; the work itself is done by the library modules.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

from cvt_nas.common.pool import WorkersLost

COMMANDS = ("models", "profile", "train", "search", "report", "compare", "ablate", "bench")


def command_line(argv: Sequence[str]) -> str:
    """The `cvt-nas ...` command as run, passwords hidden, for records (study.yaml, ...)."""
    from cvt_nas.common.storage import redact

    return redact(shlex.join(["cvt-nas", *argv]))


def build_parser() -> argparse.ArgumentParser:
    from cvt_nas.commands._common import OneLineParser

    parser = OneLineParser(
        prog="cvt-nas", description="Architecture search and ablation benchmarks for CvT."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cvt_nas.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cvt_nas.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code (2 for a usage error, printed as one line on stderr).

    A reader that leaves early (`cvt-nas ... | head`) ends the command quietly with 141
    (128 + SIGPIPE, what a shell reports for any Unix tool stopped that way), not a traceback.
    """
    try:
        code = _dispatch(list(argv) if argv is not None else sys.argv[1:])
        sys.stdout.flush()  # buffered output meets a closed pipe here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python's documented recipe: stdout goes to devnull so the final flush at exit
        # cannot fail (and print "Exception ignored ...") again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(argv: list[str]) -> int:
    """Parse `argv` and run its command; user errors become one stderr line and exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag (code 2) or --help (0): returned, not raised
        return exc.code if isinstance(exc.code, int) else 2
    args.command_line = command_line(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        from cvt_nas.commands._common import one_line

        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cvt-nas {args.command}: error: {one_line(str(msg))}", file=sys.stderr)
        return 2
    except WorkersLost as exc:  # its message is the one line
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or `cvt_nas.common.pool.Interrupted` (a signal)
        print(f"cvt-nas {args.command}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
