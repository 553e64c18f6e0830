"""``python -m hsa_cli``: same as the ``hsa`` command."""

from .app import main

main()
