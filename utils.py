"""Shared helpers: user-facing errors, flag parsing, devices, checkpoints, logging, pictures."""


class DRNetError(Exception):
    """An error the user can fix; `main` prints its message as one line and exits non-zero."""
