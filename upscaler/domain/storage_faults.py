"""Storage failures a client should hear about as what they are: a full disk is 507
Insufficient Storage, storage that cannot be reached is 503 (``StorageError``), both with a
message an operator can act on. Anything else stays what it was (a 500 with the log's detail).

Nothing is cached about a failure: the next request or sweep simply tries storage again, so the
service recovers by itself when storage returns.
"""

from __future__ import annotations

import errno

from upscaler.errors import InsufficientStorage, StorageError, UpscalerError

# OSErrors that mean "storage is not there right now" rather than "this key is wrong".
UNREACHABLE_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ECONNREFUSED, errno.ECONNRESET,
                                errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                errno.ESTALE, errno.EROFS})

# Object-store clients' own "cannot connect" errors, which are not the builtin ones (botocore's
# EndpointConnectionError under s3fs), named rather than imported: no client is required here.
CLIENT_CONNECTION_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError",
                                      "ReadTimeoutError", "ServerDisconnectedError"})


def storage_fault(exc: BaseException) -> UpscalerError | None:
    """The client-facing error a storage exception stands for, or None when it is not one."""
    if isinstance(exc, UpscalerError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(
            "job storage is full; nothing new can be stored until space is freed (the "
            "operator: free space, shorten result_ttl_s or grow the volume)")
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
            isinstance(exc, OSError) and exc.errno in UNREACHABLE_ERRNOS) or any(
            cls.__name__ in CLIENT_CONNECTION_ERRORS for cls in type(exc).__mro__):
        return StorageError(f"job storage cannot be reached now ({type(exc).__name__}); "
                            "retry shortly", retry_after=5)
    return None
