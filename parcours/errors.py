"""Errors a user can act on: what was wrong, and where."""


class InputError(ValueError):
    """Bad input from a user or caller, naming the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(InputError):
    """The input names something that does not exist (HTTP answers 404)."""
