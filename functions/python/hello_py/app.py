"""A command component (exports ``wasi:cli/run``), built by componentize-py:
reads its arguments (JSON) on stdin and prints its result (JSON) on stdout,
like functions/hello_command and functions/components/hello_cli.

``"Ada"`` or ``{"name": "Ada"}`` prints ``"Hello Ada!"``; anything else
``"Hello World!"``.

Build it with ``bash scripts/componentize python`` (the tools from
``scripts/setup``), or by hand, with wit/ holding world.wit and the WASI WIT
as deps/::

    componentize-py -d wit -w hello-py componentize app -o hello_py.wasm
"""

import json
import sys

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        try:
            args = json.loads(sys.stdin.read())
        except ValueError:
            args = None

        if isinstance(args, str):
            name = args
        elif isinstance(args, dict) and isinstance(args.get("name"), str):
            name = args["name"]
        else:
            name = "World"
        print(json.dumps(f"Hello {name}!"))
