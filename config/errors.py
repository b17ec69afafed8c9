"""The errors a command raises on purpose: the message says what is wrong and what to do.

Every command (``config.command``) turns them into one log line and exit code 2.
"""


class DedupError(Exception):
    """A command cannot go on; the message names the input, table or setting at fault."""


class ConfigError(DedupError, ValueError):
    """A config file, env var or flag is wrong; the message lists every problem found."""
