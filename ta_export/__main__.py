"""`python -m ta_export COMMAND key=value ...` (console script `ta-export`).

  python -m ta_export run=RUN_DIR [formats=[merged,gguf,ollama]] [gguf.quant=[f16,q8_0,q4_k_m]] [output=exports]
  python -m ta_export serve engine=vllm [version=V | run=RUN_DIR adapter=true] [hw=a100] [dry_run=true] [port=8000] [api_key=K]
  python -m ta_export serve engine=llamacpp [version=V] [quant=q4_k_m | gguf=FILE] [host=127.0.0.1] [port=8000] [api_key=K] [dry_run=true]
  python -m ta_export list [output=exports]
  python -m ta_export rollback VERSION [output=exports]

Every export is a new version folder under output (merged/, *.gguf, Modelfile, manifest.json);
`current` points at the latest, `rollback` re-points it. Nothing here imports torch until a command runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

COMMANDS = ("export", "serve", "list", "rollback")
EXPORT_KEYS = {"run", "formats", "gguf.quant", "output", "progress"}
SERVE_KEYS = {"engine", "version", "run", "adapter", "hw", "dry_run", "host", "port", "api_key", "name", "quant", "gguf",
              "max_model_len", "n_gpu_layers", "chat_format", "swap_space", "output"}


def parse_args(args: list[str], allowed: set[str]) -> dict[str, str]:
    """key=value pairs; a misspelt key is an error naming the keys this command accepts."""
    opts: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise SystemExit(f"ta-export: unexpected argument {arg!r}; expected key=value with key in {sorted(allowed)}")
        opts[key] = value
    return opts


def parse_list(value: str) -> list[str]:
    """`[a,b]` or `a,b` -> ['a', 'b']."""
    return [x.strip() for x in value.strip().strip("[]").split(",") if x.strip()]


def _export(opts: dict[str, str]) -> int:
    import logging

    from ta_export.export import DEFAULT_QUANTS, FORMATS, export_run

    if "run" not in opts:
        raise SystemExit("ta-export: run=RUN_DIR is required (a ta_train run directory)")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    version, lines = export_run(
        opts["run"],
        formats=parse_list(opts.get("formats", ",".join(FORMATS))),
        quants=parse_list(opts.get("gguf.quant", ",".join(DEFAULT_QUANTS))),
        output=opts.get("output", "exports"),
        progress=opts.get("progress", "true").lower() == "true",
    )
    print(f"\n== ta_export: {version.id} written to {version.path} (now current) ==")
    for rel, info in sorted(version.manifest["files"].items()) if version.manifest else []:
        if not rel.startswith("merged/") or rel.endswith(".safetensors"):
            print(f"  {rel}  {info['bytes'] / 2**20:.1f} MiB")
    if lines:
        print("Ollama:\n  " + "\n  ".join(lines))
    return 0


def _serve(opts: dict[str, str]) -> int:
    from ta_export.serve import serve_command, start

    cmd, api_key = serve_command(opts, Path(opts.get("output", "exports")))
    return start(cmd, dry_run=opts.get("dry_run", "false").lower() == "true", api_key=api_key)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    from ta_export.runs import ExportError

    command = args[0] if args[0] in COMMANDS else "export"
    rest = args[1:] if args[0] in COMMANDS else args
    try:
        if command == "export":
            return _export(parse_args(rest, EXPORT_KEYS))
        if command == "serve":
            return _serve(parse_args(rest, SERVE_KEYS))
        from ta_export.registry import format_versions, set_current

        positional = [a for a in rest if "=" not in a]
        opts = parse_args([a for a in rest if "=" in a], {"output"})
        output = Path(opts.get("output", "exports"))
        if command == "list":
            print(format_versions(output))
            return 0
        if len(positional) != 1:
            raise SystemExit("ta-export: usage: rollback VERSION [output=DIR]")
        set_current(output, positional[0])
        print(f"current -> {positional[0]} in {output}")
        return 0
    except ExportError as err:
        print(f"ta-export: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
