"""Derive A1111's option keys and defaults from its `modules/shared_options.py` (run once; the output is committed).

    python tests/data/derive_a1111_options.py path/to/shared_options.py COMMIT > tests/data/a1111_options.json

Every `"key": OptionInfo(default, ...)` inside an `options_section(...)` dict is one option (OptionHTML entries
are UI text, not options: A1111 leaves them out of /sdapi/v1/options too). A default that is not a literal
(a path built at start-up, a command-line flag) is recorded as its source expression under "computed".
"""

from __future__ import annotations

import ast
import json
import sys


def options(source: str) -> tuple[dict, dict]:
    literal, computed = {}, {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "options_section"):
            continue
        table = node.args[1]
        for key, value in zip(table.keys, table.values):
            call = value
            while isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):  # .info(...).link(...)
                call = call.func.value
            if getattr(call.func, "id", None) != "OptionInfo":
                continue
            name = ast.literal_eval(key)
            try:
                literal[name] = ast.literal_eval(call.args[0])
            except ValueError:
                computed[name] = ast.unparse(call.args[0])
    return literal, computed


if __name__ == "__main__":
    path, commit = sys.argv[1], sys.argv[2]
    literal, computed = options(open(path, encoding="utf-8").read())
    json.dump({"source": f"AUTOMATIC1111/stable-diffusion-webui@{commit}:modules/shared_options.py (v1.10.1)",
               "defaults": literal, "computed": computed}, sys.stdout, indent=1, ensure_ascii=False)
    print()
