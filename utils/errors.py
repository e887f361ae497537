"""The framework's user-facing error types.

Every mistake a user can make in a config, on the command line or with a file raises one of these,
with a message that names where the problem is and what would fix it. The command-line scripts print
the message without a traceback and exit with status 2.
"""


class FrameworkError(Exception):
    """Base class: an error caused by the user's input, not by a bug in the framework."""


class ConfigError(FrameworkError):
    """A config value, config key, registered name or command-line option is wrong."""


class CheckpointError(FrameworkError):
    """A checkpoint file is missing, unreadable, truncated or not one this framework wrote."""


class DataError(FrameworkError):
    """A data file or directory is missing or holds something the loader cannot accept."""


class StorageError(FrameworkError):
    """A file or directory the program writes cannot be written (full disk, read-only mount, a file in the way)."""


class NonFiniteLossError(FrameworkError):
    """The training loss, a validation metric or the weights became NaN or Inf; training stops without saving
    that epoch and the last good checkpoint is kept."""


def format_path(keys) -> str:
    """Render a key path as a user reads it in the JSON: ("arch", "args", "x") -> config["arch"]["args"]["x"]."""
    return "config" + "".join(f"[{k!r}]" if isinstance(k, int) else f'["{k}"]' for k in keys)
