"""Errors a stage raises on purpose: the message says what is wrong and what to do."""


class DedupError(Exception):
    """A stage cannot go on; the message names the input, table or setting at fault."""
