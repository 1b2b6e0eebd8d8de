"""`python -m ta_data COMMAND key=value ...` (console script `ta-data`).

Commands: `demo output=DIR` writes the built-in demo course as DIR/sft.jsonl.
"""
from __future__ import annotations

import sys

COMMANDS = {"demo": "write the built-in demo course as sft.jsonl: ta-data demo output=DIR"}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from ta_data.demo import main as demo_main

        return demo_main(rest)
    print(f"ta-data: unknown command {command!r}; available: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
