"""What `upscaler serve` tells the operator about Ray's control plane: where the dashboard
listens and how to authenticate to it.

The dashboard accepts job submissions, so whoever reaches it runs code on the machine
(ShadowRay, CVE-2023-48022). Ray's token auth closes it; these lines say where the token is,
because the browser asks for it and the Ray and Serve CLIs need it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping, MutableMapping
from pathlib import Path

# Where Ray 2.52+ looks for the cluster token, highest first (Ray's token-auth docs).
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def default_token_path() -> Path:
    """Where Ray keeps the token when no variable names one (and where a new local cluster
    writes the one it generates)."""
    return Path.home() / ".ray" / "auth_token"


def token_location(env: Mapping[str, str] = os.environ) -> str:
    """Where this process's Ray takes its token from, in words an operator can act on."""
    if env.get(TOKEN_ENV):
        return f"the {TOKEN_ENV} variable"
    if env.get(TOKEN_PATH_ENV):
        return env[TOKEN_PATH_ENV]
    return str(default_token_path())


def dashboard_lines(address: str, token_auth: bool,
                    env: Mapping[str, str] = os.environ) -> list[str]:
    """The dashboard's URL, then how to get in (or a warning that anyone can)."""
    url = address if "://" in address else f"http://{address}"
    if not token_auth:
        return [f"Dashboard: {url}",
                "           WARNING: Ray token auth is off (RAY_AUTH_MODE): whoever reaches "
                "this port can run code here"]
    return [f"Dashboard: {url}",
            f"           token auth: the browser asks for the token in {token_location(env)}",
            "           (`ray get-auth-token` prints it; Ray/Serve CLIs: "
            "export RAY_AUTH_MODE=token)"]


def restrict_token_file(env: Mapping[str, str] = os.environ) -> None:
    """Make the token file owner-only. Ray writes it with the umask's mode (0644 usually), so on
    a shared machine every user could read the credential that runs code on this cluster;
    Ray's own processes run as this user and still read it."""
    if env.get(TOKEN_ENV):
        return
    path = Path(env.get(TOKEN_PATH_ENV) or default_token_path())
    with contextlib.suppress(OSError):  # not ours, or gone: leave it to its owner
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o600)


def prepare_own_cluster(env: MutableMapping[str, str] = os.environ) -> Path | None:
    """Before `upscaler serve` starts its own cluster: token auth on (unless the operator
    chose otherwise) and the token file there already, owner-only. Ray would write it with
    the umask's mode (0644 usually) and it would stay readable until ``ray.init`` returned;
    made here first (0600 in a 0700 folder), Ray finds and reads it instead. Returns the
    token file (None: the token is in the environment, or token auth is off)."""
    env.setdefault(AUTH_MODE_ENV, "token")
    if env[AUTH_MODE_ENV].lower() != "token" or env.get(TOKEN_ENV):
        return None
    path = Path(env.get(TOKEN_PATH_ENV) or default_token_path())
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    try:  # 256 random bits, as Ray makes them
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # the operator's (or an earlier run's): made owner-only
        restrict_token_file(env)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path
