"""`python -m ta_data input=PATH output=DIR [data=teaching_mix] [stage=NAME] [key=value ...]` (console script `ta-data`).

Runs the data pipeline (read, clean, quality, pii, dedup, chunk, synth, refusals, mix) with Hydra
overrides of conf/data.yaml; `stage=NAME` runs one stage on the previous stage's file in DIR/stages/.
`--cfg` prints the composed config and runs nothing.

Other command: `demo output=DIR` writes the built-in demo course as DIR/sft.jsonl.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if args[0] == "demo":
        from ta_data.demo import main as demo_main

        return demo_main(args[1:])
    bad = [a for a in args if "=" not in a and a != "--cfg"]
    if bad:
        print(f"ta-data: expected key=value overrides (or the command demo), got {bad[0]!r}", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    from ta_data.config import compose_config

    try:
        cfg, plain = compose_config([a for a in args if a != "--cfg"])
    except Exception as exc:  # a typo or a wrong type: say which key, no traceback
        print(f"ta-data: bad config: {exc}", file=sys.stderr)
        return 2
    if "--cfg" in args:
        print(OmegaConf.to_yaml(plain))
        return 0
    from ta_data.pipeline import run

    try:
        run(cfg, plain)
    except (FileNotFoundError, NotADirectoryError) as exc:  # a missing input or stage file: say which
        print(f"ta-data: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
