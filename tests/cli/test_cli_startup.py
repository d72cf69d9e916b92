"""CLI start-up: a command line builds only its own command's parser, so help and usage errors answer without
importing torch, and the table of which module registers which command stays true."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from sae.cli import COMMAND_MODULES, MODULE_OF_COMMAND, OneLineParser


def test_module_of_command_is_what_the_modules_register():
    seen = {}
    for name in COMMAND_MODULES:
        parser = OneLineParser(prog="attnscope")
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(f"sae.cli.{name}").register(sub)
        seen.update({command: name for command in sub.choices})
    assert seen == MODULE_OF_COMMAND


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import contextlib, io, json, sys\n"
        "from workbench.main import main\n"
        "out = []\n"
        "for argv in (['features', '--help'], ['trace', '--layer', '1'], ['eval', '--tokens', 'x']):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as exc:\n"
        "            rc = exc.code\n"
        "    out.append([rc, err.getvalue().strip()])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'runs': out}))\n"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert got["torch"] is False
    (help_rc, _), (trace_rc, trace_err), (eval_rc, eval_err) = got["runs"]
    assert help_rc == 0 and trace_rc == 2 and eval_rc == 2
    assert trace_err.startswith("attnscope: error: trace:") and "--feature" in trace_err
    assert eval_err.startswith("attnscope: error: eval:") and "'x'" in eval_err


def test_a_full_parser_still_lists_every_command():
    from sae.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands == set(MODULE_OF_COMMAND)
    assert set(build_parser(command="features")._subparsers._group_actions[0].choices) == {"features"}
