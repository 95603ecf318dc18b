"""`conveyor users` and `conveyor token` against real processes; the signing secret's rules at start-up."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest
from tests.processes import ServerProcess
from tests.test_cli import conveyor

pytestmark = pytest.mark.timeout(120)


def test_token_prints_a_jwt_last_that_the_server_accepts_and_revoke_kills_it(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("token", "exec", "Workflow", "3600000", "greeting", env=server.env)
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["scopes"] == [
            {"action": "exec", "subject": "Workflow", "conditions": {"id": {"$in": ["greeting"]}}}
        ]
        assert 3599 <= claims["exp"] - claims["iat"] <= 3601  # milliseconds in, seconds in the claim
        headers = {"Authorization": f"Bearer {token}"}
        submit = httpx.post(
            f"{server.url}/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "x"}}, headers=headers
        )
        assert submit.status_code == 202, submit.text
        other = httpx.post(f"{server.url}/api/v1/jobs", json={"recipe": "json-reshape", "inputs": {}}, headers=headers)
        assert other.status_code == 403
        assert conveyor("token", "revoke", claims["tokenId"], env=server.env).returncode == 0
        assert httpx.get(f"{server.url}/api/v1/jobs", headers=headers).status_code == 401
        missing = conveyor("token", "exec", "Workflow", env=server.env)
        assert missing.returncode == 2 and "expires_in" in missing.stderr


def test_users_create_list_disable_and_tokens_for_them(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        created = subprocess.run(
            [sys.executable, "-m", "conveyor", "users", "create", "hana", "--org", "acme", "--password-stdin"],
            input="a long enough password\n", env=server.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert conveyor("users", "create", "hana", env=server.env).returncode == 1  # taken
        listing = conveyor("users", "list", env=server.env, timeout=60)
        assert "hana" in listing.stdout and "acme" in listing.stdout and "admin" in listing.stdout
        token = conveyor("token", "exec", "Workflow", "60000", "--user", "hana", env=server.env).stdout.split()[-1]
        headers = {"Authorization": f"Bearer {token}"}
        me = httpx.get(f"{server.url}/api/v1/auth/me", headers=headers).json()
        assert me["name"] == "hana" and me["isAdmin"] is False and me["orgId"]
        basic = httpx.post(f"{server.url}/api/v1/auth/token", json={}, auth=("hana", "a long enough password"))
        assert basic.status_code == 201, basic.text
        assert conveyor("users", "disable", "hana", env=server.env).returncode == 0
        assert httpx.get(f"{server.url}/api/v1/auth/me", headers=headers).status_code == 401


def test_first_start_makes_an_admin_and_a_private_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as server:
        password = (data / "initial-admin-password").read_text().strip()
        assert stat.S_IMODE((data / "initial-admin-password").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "jwt-secret").stat().st_mode) == 0o600
        assert len((data / "jwt-secret").read_bytes().strip()) >= 32
        issued = httpx.post(f"{server.url}/api/v1/auth/token", json={"action": "manage", "subject": "all"},
                            auth=("admin", password))  # fmt: skip
        assert issued.status_code == 201
        assert password not in server.log.read_text()  # never logged


def test_a_short_configured_secret_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"CONVEYOR_AUTH__JWT_SECRET": "too-short"})
    done = conveyor("serve", env=server.env, timeout=60)
    assert done.returncode != 0
    assert "at least 32" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_tokens_signed_with_another_secret_are_refused(tmp_path: Path) -> None:
    secret = "x" * 40
    with ServerProcess(tmp_path / "data", env={"CONVEYOR_AUTH__JWT_SECRET": secret}) as server:
        good = conveyor("token", "exec", "Workflow", "60000", env=server.env).stdout.split()[-1]
        assert httpx.get(f"{server.url}/api/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        other_env = {**server.env, "CONVEYOR_AUTH__JWT_SECRET": "y" * 40}
        done = conveyor("token", "exec", "Workflow", "60000", env=other_env)
        forged = done.stdout.split()[-1]
        assert httpx.get(f"{server.url}/api/v1/jobs", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
