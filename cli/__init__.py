"""``hsa``: the command-line interface of hsa-toolkit (typer).

One module per command, each thin: parse the arguments, call :mod:`hsa_core`, print with rich.
Exit codes (:mod:`hsa_cli._common`): 0 ok, 1 invalid spec, 2 usage, 3 missing optional dependency,
4 a self-check of ``hsa demo`` failed.
"""
