"""Status codes and the exception that carries them."""

import enum

from . import _lib


class Status(enum.IntEnum):
    """kf_status: the member names are the C names, the values the C values."""

    KF_OK = 0
    KF_ERR_NULL_POINTER = -1
    KF_ERR_INVALID_ARGUMENT = -2
    KF_ERR_SHAPE = -3
    KF_ERR_OUT_OF_MEMORY = -4
    KF_ERR_NON_FINITE = -10
    KF_ERR_NOT_POSITIVE_DEFINITE = -11
    KF_ERR_NO_CONVERGENCE = -12
    KF_ERR_STATE = -20
    KF_ERR_FORMAT = -21
    KF_ERR_IO = -22
    KF_ERR_UNSUPPORTED = -23


def status_string(status):
    """The C library's description of a status code ("KF_ERR_SHAPE: ...")."""
    return _lib.lib.kf_status_string(int(status)).decode("utf-8", "replace")


def _status_name(status):
    try:
        return Status(status).name
    except ValueError:
        # A code appended by a newer library than this binding knows: its own string names it.
        return status_string(status).split(":", 1)[0]


class KronfacError(Exception):
    """A Kronfac call failed.

    Attributes:
        status: the kf_status code (an int; a Status member when known).
        name:   its C name, e.g. "KF_ERR_SHAPE".
        message: what went wrong, from kf_context_last_error / kf_optimizer_last_error (the C
                 message names the function and the bad argument), or from the binding's own checks.
    """

    def __init__(self, status, message=""):
        try:
            self.status = Status(status)
        except ValueError:
            self.status = int(status)
        self.name = _status_name(status)
        self.message = message or status_string(status)
        super().__init__(f"{self.name}: {self.message}")


def raise_for(status, message, fallback=""):
    """Raises KronfacError unless status is KF_OK. message: bytes from a last-error function."""
    if status == 0:
        return
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else (message or "")
    raise KronfacError(status, text or fallback)
