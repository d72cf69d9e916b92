"""The `attnscope` subcommands. Each module here registers one command group and only prints:
the computation lives in `sae/` functions, which return plain data turned into a table, JSON or markdown.
May import anything in `sae`; nothing in `sae` imports it. "default" (model, SAEs, corpus) is resolved via `sae.zoo`."""

from __future__ import annotations

import argparse
import importlib
import sys

import os

from sae.cli.common import fail, guarded
from sae.engine.safe_text import from_argv, term_line

# module name -> registers its subcommands with `register(subparsers)`
COMMAND_MODULES = [
    "train",
    "cache",
    "evaluate",
    "bench",
    "zoo",
    "features",
    "trace",
    "compose",
    "proxy",
    "intervene",
    "search",
    "compare",
    "dashboards",
    "heads",
    "families",
    "roles",
    "study",
    "induction",
    "ioi",
]

# command -> the module that registers it (tests/cli checks it against what the modules register)
MODULE_OF_COMMAND = {"eval": "evaluate", "dashboard": "dashboards",
                     **{name: name for name in COMMAND_MODULES if name != "evaluate"}}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (`attnscope: error: train: ... (see attnscope train --help)`)
    and exit 2, like every other error, instead of the usage block followed by the error. Subcommand parsers
    inherit it."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.removeprefix("attnscope").strip()
        where = f"{command}: " if command else ""
        print(f"attnscope: error: {where}{term_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(extra_modules: list = (), command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `command` (the command about to run, one of `MODULE_OF_COMMAND`), only its
    module's: the others' `register` import what their flags' defaults come from (torch, through `TrainConfig` or
    the benchmarks), which `attnscope features --help` or a usage error need not wait for."""
    modules = [MODULE_OF_COMMAND[command]] if command in MODULE_OF_COMMAND else COMMAND_MODULES
    parser = OneLineParser(
        prog="attnscope",
        description="Interpret attention layers with sparse autoencoders. With no command, opens the workbench.",
        epilog=(
            "workbench: `attnscope [--model M] [--saes S]` opens the TUI; `attnscope export --out FILE.md` writes "
            "pinned findings as markdown; `attnscope screenshots` redraws screenshots/; `attnscope bench tui` times "
            "the heatmap."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"sae.cli.{name}").register(sub)
    for mod in extra_modules:
        mod.register(sub)
    return parser


def text_args(argv: list[str]) -> list[str]:
    """The command line as valid text: an argument holding bytes that are not UTF-8 (Python passes them as lone
    surrogates) becomes text with U+FFFD in their place, unless it names an existing file (kept byte for byte)."""
    out = []
    for a in argv:
        fixed = from_argv(a)
        if fixed != a:
            try:
                if os.path.lexists(a):
                    fixed = a
            except (OSError, ValueError):
                pass
        out.append(fixed)
    return out


def main(argv: list[str] | None = None, extra_modules: list = ()) -> int:
    import sae.zoo  # noqa: F401 - registers the installed package as read-only to every writer (safe_io.protect)

    raw = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(extra_modules, command=raw[0] if raw and not raw[0].startswith("-") else None)
    if any("\x00" in a for a in raw):  # no real command line holds one; no path or prompt may
        return fail("an argument holds a NUL character")
    argv = text_args(raw)
    args = parser.parse_args(argv)
    args.argv = raw  # the command line, for commands that relaunch it
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guarded(lambda: args.func(args), f"attnscope {args.command}")


if __name__ == "__main__":
    sys.exit(main())
