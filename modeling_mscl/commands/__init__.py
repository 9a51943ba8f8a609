"""The command-line programs: one module per ``mscl`` subcommand (:mod:`modeling_mscl.cli`).

Each module has ``main(argv: list[str] | None = None) -> int``, which parses ``argv``
(default ``sys.argv[1:]``) with the module's own parser and returns the exit status, and
runs as ``python -m modeling_mscl.commands.NAME`` (``accelerate launch -m`` for pretrain).
"""
