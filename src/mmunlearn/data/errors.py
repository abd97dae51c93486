"""The one error type the data loaders raise.

Every problem with a local benchmark folder (missing folder, missing file, wrong schema, corrupt
image, a record without an answer...) surfaces as a `DataError` whose message is a single line that
says what is wrong and where (folder, file, row, field), so a CLI can print `str(err)` and stop.
"""

from __future__ import annotations

from .record import RecordError


class DataError(ValueError):
    """A local data source that cannot be turned into `Record`s; the message is one line."""

    def __init__(self, message: object) -> None:
        # One line, whatever the embedded exception texts contained.
        super().__init__(" ".join(str(message).split()))

    @classmethod
    def from_record_error(cls, err: RecordError, where: str) -> "DataError":
        """Wrap a `RecordError` (e.g. "record without an answer") with the file/row it came from."""
        return cls(f"{where}: {err}")
