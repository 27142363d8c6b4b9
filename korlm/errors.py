"""User-facing errors: one line that says what is wrong and what to do."""


class KorlmError(Exception):
    """Bad input, bad config or a missing artifact. The CLI prints it as one line."""


class NotBuiltError(KorlmError):
    """A mode that is designed but not implemented yet; the message names the issue."""

    def __init__(self, what: str, issue: int):
        super().__init__(f"{what} is not built yet (tracked in issue #{issue})")
