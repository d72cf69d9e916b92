"""The `attnscope` console script: no command opens the workbench; commands go to `sae.cli`."""

from __future__ import annotations

import sys

from sae import cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = cli.build_parser(command=argv[0] if argv and not argv[0].startswith("-") else None)
    commands = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()  # noqa: SLF001
    workbench_cmds = {"screenshots", "export"}
    if argv[:2] == ["bench", "tui"]:  # the workbench's own benchmark lives beside it (workbench/bench_tui.py)
        from workbench import launch

        return launch.main(argv)
    if argv and (argv[0] in commands or argv[0] in ("-h", "--help")) and argv[0] not in workbench_cmds:
        return cli.main(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in workbench_cmds:
        known = ", ".join(sorted(commands | workbench_cmds))
        print(f"attnscope: error: unknown command {argv[0]!r} (commands: {known}; see attnscope --help)",
              file=sys.stderr)
        return 2
    from workbench import launch  # Textual is imported only when the workbench is wanted

    return launch.main(argv)


if __name__ == "__main__":
    sys.exit(main())
