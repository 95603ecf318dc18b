"""`conveyor keys create|list|revoke` against a real server process: shown once, usable, revoked at once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.processes import ServerProcess
from tests.test_cli import conveyor

pytestmark = pytest.mark.timeout(120)


def test_keys_create_list_and_revoke(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        created = conveyor("keys", "create", "--kind", "personal", "--name", "ci", env=server.env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        assert key.startswith("cvy_pat_")
        assert "whsec_" in created.stderr and "whsec_" not in created.stdout
        key_id = created.stderr.split()[1]
        for header in (f"Bearer {key}", key):
            me = httpx.get(f"{server.url}/api/v1/auth/me", headers={"Authorization": header})
            assert me.status_code == 200 and me.json()["name"] == "admin", me.text
        listing = conveyor("keys", "list", env=server.env)
        assert listing.returncode == 0, listing.stderr
        assert key_id in listing.stdout and key[:14] in listing.stdout and key not in listing.stdout
        assert conveyor("keys", "revoke", key_id, env=server.env).returncode == 0
        assert httpx.get(f"{server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert "\trevoked" in conveyor("keys", "list", env=server.env).stdout
        assert key not in server.log.read_text(errors="replace")


def test_recipe_and_org_keys_from_the_cli(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        assert conveyor("users", "create", "ines", "--org", "acme", env=server.env).returncode == 0
        recipe = conveyor("keys", "create", "--kind", "recipe", "--name", "g", "--recipe", "greeting", env=server.env)
        assert recipe.returncode == 0, recipe.stderr
        headers = {"Authorization": recipe.stdout.strip().splitlines()[-1]}
        ok = httpx.post(
            f"{server.url}/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": "x"}}, headers=headers
        )
        assert ok.status_code == 202, ok.text
        other = httpx.post(f"{server.url}/api/v1/jobs", json={"recipe": "json-reshape", "inputs": {}}, headers=headers)
        assert other.status_code == 403
        org = conveyor("keys", "create", "--kind", "org", "--name", "o", "--user", "ines", env=server.env)
        assert org.returncode == 0, org.stderr
        me = httpx.get(
            f"{server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {org.stdout.strip().splitlines()[-1]}"}
        )
        assert me.json()["name"] == "ines"
        no_org = conveyor("keys", "create", "--kind", "org", "--name", "o", env=server.env)
        assert no_org.returncode == 1 and "organization" in no_org.stderr
        listing = conveyor("keys", "list", "--user", "ines", env=server.env).stdout
        rows = listing.strip().splitlines()[1:]
        assert [row.split("\t")[1] for row in rows] == ["org"]
