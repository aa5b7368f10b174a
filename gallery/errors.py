"""Error types shared by the library and the CLI.

The CLI maps each to one line on stderr and an exit code, so library code raises
these instead of printing or calling sys.exit.
"""


class GalleryError(Exception):
    """Base class: an operation could not be completed."""

    exit_code = 1


class BadInput(GalleryError):
    """The user gave input we cannot use (missing file, wrong shape, unknown name)."""

    exit_code = 2


class NotFound(BadInput):
    """An item, model or file named by the user does not exist (a BadInput: CLI exit 2)."""


class GateFailed(GalleryError):
    """A quality gate (compatibility report, threshold) refused the operation."""

    exit_code = 1


class StoreLocked(GalleryError):
    """Another writer holds the store's lock."""

    exit_code = 3
