"""The one exception of the data pipeline: a message for people and the exit code the CLI uses."""

from __future__ import annotations

from hsa_core.errors import HSAError

EXIT_DATA = 1  # invalid data (empty input, bad encoding, corrupted shard, tokenizer mismatch, ...)
EXIT_USAGE = 2  # a path that does not exist, an option that cannot be honoured


class DataError(HSAError, ValueError):
    """Invalid input data, prepared data or a mismatch between data and a run.

    The message names the file (and line/field/value where there is one) and what is allowed;
    ``exit_code`` is 1 for bad data and 2 for a usage mistake (a missing path).
    """

    def __init__(self, message: str, exit_code: int = EXIT_DATA) -> None:
        super().__init__(message)
        self.exit_code = exit_code
