"""`attnscope` with no command (the workbench), `attnscope screenshots`, `attnscope export`, `attnscope bench tui`."""

from __future__ import annotations

import argparse
import sys

from sae.cli.common import UsageError, guarded
from sae.engine.safe_text import term_line

EXAMPLE_PROMPT = "When Mary and John went to the store, John gave a drink to"


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="HF name or local model dir (default: the embedded default)")
    p.add_argument("--saes", default="default", help="SAE dir or dir of SAE dirs (default: the embedded SAEs)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (the model and its SAEs)")
    p.add_argument("--resident-saes", type=int, default=None, metavar="N",
                   help="keep at most N layers' SAEs on the GPU; the others wait in CPU memory and move over when "
                   "a screen asks for their layer (the move time is shown); default: all")


def build_parser() -> argparse.ArgumentParser:
    from sae.cli import OneLineParser

    parser = OneLineParser(
        prog="attnscope",
        description="The attnscope workbench. Other commands: `attnscope --help` lists them via `attnscope COMMAND -h`.",
    )
    add_engine_flags(parser)
    parser.add_argument("--layer", type=int, default=None, help="layer to explore first")
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt to start with (default: the last prompt of the previous session, else an IOI sentence; pass '' "
        "to start empty)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("screenshots", help="write an SVG of every workbench screen into a folder")
    add_engine_flags(s)
    s.add_argument("--out", default="screenshots", help="folder for the SVGs (default: screenshots/)")
    s.add_argument("--size", default="120x36", help="terminal size WIDTHxHEIGHT (default 120x36)")
    s.add_argument("--prompt", default=None, help="prompt typed on the explore screen")

    e = sub.add_parser("export", help="write the pinned findings as one markdown report (or --html: one web page)")
    e.add_argument("--out", required=True, help="markdown file to write (with --html: the HTML file)")
    e.add_argument("--html", action="store_true",
                   help="one self-contained HTML page (no network, no script) instead of markdown and SVG figures")
    e.add_argument("--title", default="attnscope findings")

    b = sub.add_parser("bench", help="workbench benchmarks")
    bsub = b.add_subparsers(dest="bench", metavar="WHAT")
    t = bsub.add_parser("tui", help="prompt-to-heatmap latency and heatmap cursor repaint time")
    add_engine_flags(t)
    t.add_argument("--tokens", type=int, default=64, help="prompt length in tokens (default 64)")
    t.add_argument("--repeats", type=int, default=20, help="timed repeats (default 20)")
    t.add_argument("--json", action="store_true", help="print JSON")
    return parser


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 120x36, got {text!r}") from None
    if w < 80 or h < 24:
        raise UsageError(f"--size must be at least 80x24, got {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    from sae.cli import text_args

    argv = text_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its own message
        return int(exc.code or 0)
    return guarded(lambda: dispatch(args), f"attnscope {args.command or 'workbench'}")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "export":
        return export_command(args)
    if args.command == "screenshots":
        from workbench.screenshots import write_screenshots

        paths = write_screenshots(args.out, model=args.model, saes=args.saes, device=args.device,
                                  size=parse_size(args.size), prompt=args.prompt)
        for p in paths:
            print(term_line(p))
        return 0
    if args.command == "bench":
        if args.bench != "tui":
            raise UsageError("choose a benchmark: attnscope bench tui")
        from workbench.bench_tui import main as bench_main

        return bench_main(args)
    return run_app(args)


def export_command(args: argparse.Namespace) -> int:
    from workbench.figures import export_report
    from workbench.findings import FindingsStore, export_replaces

    store = FindingsStore()
    if store.error:  # a damaged findings file: say so and stop; the file stays where it is
        raise UsageError(f"{store.error}; nothing exported (fix or remove the file)")
    replaced = export_replaces(args.out)
    if getattr(args, "html", False):
        from workbench.html_export import write_html

        path = write_html(args.out, store.findings, title=args.title)
    else:
        path = export_report(args.out, store.findings, title=args.title)
    print(f"wrote {len(store)} finding(s) to {term_line(path)}" + (" (replaced the existing file)" if replaced else ""))
    return 0


def check_terminal() -> None:
    """The workbench draws on a terminal; without one (`attnscope </dev/null`, a pipe) say so and stop."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        which = "stdin" if not sys.stdin.isatty() else "stdout"
        raise UsageError(f"the workbench needs a terminal, but {which} is not one; "
                         "run it in a terminal, or use a command (attnscope --help lists them)")


def open_engine(args: argparse.Namespace):  # -> workbench.engine.Engine
    """Load the model and SAEs before the TUI opens, so bad flags are one line and exit 2 (a missing model is a
    model error, SAEs that will not load an SAE error)."""
    import asyncio

    from workbench.engine import Engine

    engine = Engine(args.model, args.saes, device=args.device, dtype=args.dtype,
                    resident_saes=getattr(args, "resident_saes", None))
    print(f"attnscope: loading {term_line(args.model)} model and {term_line(args.saes)} SAEs ...", file=sys.stderr,
          flush=True)
    try:
        asyncio.run(engine.open())
    except BaseException:
        engine.close()
        raise
    return engine


def run_and_close(app, headless: bool = False) -> int:  # app: workbench.app.WorkbenchApp
    """Run the app, then stop the engine's worker thread. Quitting waited for the jobs (see `action_quit`); after
    a forced quit a torch call may still be running, and letting the interpreter tear down under it aborts the
    process (`terminate called without an active exception`), so then the process ends at once, cleanly."""
    import os

    watch = None
    if not headless:  # a terminal that goes away ends the app as ctrl+q does (workbench/terminal_watch.py)
        from workbench.terminal_watch import TerminalWatch

        watch = TerminalWatch(app)
        watch.install_signal()
        watch.start()
    try:
        app.run(headless=headless)
    finally:
        if watch is not None:
            watch.stop()
        code = app.return_code or 0
        stopped = app.engine.worker.close(timeout=2.0 if code == 130 else 30.0)
    if not stopped:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 130)
    return code


def run_app(args: argparse.Namespace) -> int:
    from workbench.app import WorkbenchApp

    check_terminal()
    engine = open_engine(args)
    auto = args.saes == "default" and args.model == "default"  # first launch: build the default's dashboards
    prompt = args.prompt
    if prompt is None:
        from workbench.session import Session

        prompt = Session().last_prompt() or EXAMPLE_PROMPT
    app = WorkbenchApp(engine, start_layer=args.layer, start_prompt=prompt, auto_build=auto)
    return run_and_close(app)
