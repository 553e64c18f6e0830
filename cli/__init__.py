"""``hsa``: the command-line interface of hsa-toolkit (typer).

One module per command, each thin: parse the arguments, call :mod:`hsa_core`, print with rich.
Exit codes (:mod:`hsa_cli._common`, the README's table): 0 ok, 1 invalid spec, 2 usage, 3 missing
optional dependency or no CUDA GPU, 4 a self-check of ``hsa demo`` failed, 5 a file cannot be read or
written, 6 a corrupt or inconsistent model/checkpoint file, 7 out of memory or over a limit, 70 an
internal error (a bug), 130 interrupted.
"""
