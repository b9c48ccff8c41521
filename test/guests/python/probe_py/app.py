"""A test guest, not an example: functions/python/hello_py (a command
component, exporting ``wasi:cli/run``, built by componentize-py: reads its
arguments, JSON, on stdin and prints its result on stdout) with the hooks the
tests call.

* ``"Ada"`` or ``{"name": "Ada"}`` prints ``"Hello Ada!"``; anything else
  ``"Hello World!"``, as the example does;
* ``{"exit": n}`` writes a line to stderr and exits with status ``n``
  (WASI 0.2's exit only tells success from failure);
* ``{"panic": "why"}`` raises an exception with that message: componentize-py
  prints the traceback on stderr and traps;
* ``{"text": "..."}`` prints that text as it is, not as JSON;
* ``{"stderr": "..."}`` writes that text to stderr, then answers as for a name;
* ``{"spin": true}`` loops forever;
* ``{"sleep_ms": n}`` sleeps n milliseconds, then prints ``{"slept_ms": n}``;
* ``{"grow_mb": n}`` allocates and fills n MiB, then prints ``{"grew_mb": n}``.
"""

import json
import sys
import time

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        try:
            args = json.loads(sys.stdin.read())
        except ValueError:
            args = None
        hooks = args if isinstance(args, dict) else {}

        if isinstance(hooks.get("exit"), int):
            print(f"exiting with status {hooks['exit']}, as asked", file=sys.stderr, flush=True)
            sys.exit(hooks["exit"])
        if isinstance(hooks.get("panic"), str):
            raise RuntimeError(hooks["panic"])
        if isinstance(hooks.get("text"), str):
            print(hooks["text"])
            return
        if isinstance(hooks.get("stderr"), str):
            print(hooks["stderr"], file=sys.stderr, flush=True)
        if hooks.get("spin") is True:
            while True:
                pass
        if isinstance(hooks.get("sleep_ms"), int):
            time.sleep(hooks["sleep_ms"] / 1000)
            print(json.dumps({"slept_ms": hooks["sleep_ms"]}))
            return
        if isinstance(hooks.get("grow_mb"), int):
            block = bytearray(b"\x01") * (hooks["grow_mb"] << 20)
            print(json.dumps({"grew_mb": len(block) >> 20}))
            return

        if isinstance(args, str):
            name = args
        elif isinstance(hooks.get("name"), str):
            name = hooks["name"]
        else:
            name = "World"
        print(json.dumps(f"Hello {name}!"))
