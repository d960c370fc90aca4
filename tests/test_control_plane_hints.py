"""What `upscaler serve` prints about the dashboard: where the token is, or a warning."""

from __future__ import annotations

import os
from pathlib import Path

from serve_app.control_plane import (
    dashboard_lines,
    prepare_own_cluster,
    restrict_token_file,
    token_location,
)


def test_the_token_is_found_where_ray_looks_first():
    assert token_location({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_TOKEN_PATH": "/p"}) == (
        "the RAY_AUTH_TOKEN variable")
    assert token_location({"RAY_AUTH_TOKEN_PATH": "/etc/ray/token"}) == "/etc/ray/token"
    assert token_location({}) == str(Path.home() / ".ray" / "auth_token")


def test_dashboard_lines_say_how_to_get_in_or_warn():
    on = "\n".join(dashboard_lines("127.0.0.1:8265", True, {"RAY_AUTH_TOKEN_PATH": "/t"}))
    assert on.startswith("Dashboard: http://127.0.0.1:8265\n")
    assert "the token in /t" in on and "ray get-auth-token" in on
    assert "RAY_AUTH_MODE=token" in on
    off = "\n".join(dashboard_lines("127.0.0.1:8265", False, {}))
    assert "WARNING" in off and "run code" in off


def test_the_token_file_becomes_owner_only(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    restrict_token_file({"RAY_AUTH_TOKEN_PATH": str(token)})
    assert token.stat().st_mode & 0o777 == 0o600
    restrict_token_file({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})  # no error
    assert os.access(token, os.R_OK)


def test_the_token_file_is_owner_only_before_ray_reads_it(tmp_path):
    """`upscaler serve` makes Ray's token file itself, 0600 in a 0700 folder, before
    ray.init: Ray finds a token and never writes one with the umask's mode (0644)."""
    old = os.umask(0o022)
    try:
        token = tmp_path / "ray" / "auth_token"
        env = {"RAY_AUTH_TOKEN_PATH": str(token)}
        assert prepare_own_cluster(env) == token
        assert env["RAY_AUTH_MODE"] == "token"
        assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 \
            == 0o700
        assert len(token.read_text()) == 64  # 256 random bits, hex, as Ray makes them
        first = token.read_text()
        token.chmod(0o644)  # an earlier run's, or the operator's: kept, made owner-only
        assert prepare_own_cluster(env) == token and token.read_text() == first
        assert token.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert prepare_own_cluster({"RAY_AUTH_MODE": "disabled"}) is None  # the operator's call
    assert prepare_own_cluster({"RAY_AUTH_TOKEN": "t"}) is None  # nothing on disk
