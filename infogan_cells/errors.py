"""The one exception type for a user's mistake.

Library code raises :class:`InputError` for anything the user can fix (a bad file, a bad
config value, a missing device). The CLI turns it into one line on stderr and exit status 2,
never a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input: a file, a config key or value, a device.

    The message names the file or key and says what is wrong.
    """


class ConfigError(InputError):
    """A config key that does not exist, or a value of the wrong type or range."""
