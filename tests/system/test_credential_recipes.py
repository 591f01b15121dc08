"""docs/credentials.md's systemd timer recipe, as written: its script, service and timer are read
from the doc, installed on a host where the provider runs under systemd, and run. The site's
issuer, `/usr/local/sbin/issue-kms-jwt`, is stood in for by a script that prints a JWT the
lab OpenBao accepts (or nothing, to show a failed run keeps the old file)."""

import base64
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import REPO_ROOT, provider_config  # noqa: E402
from provider_host import CONFIG, install_units, start_by_connecting  # noqa: E402

DOC = REPO_ROOT / "docs" / "credentials.md"
JWT = "/var/lib/openbao-kms/identity.jwt"
SCRIPT = "/usr/local/sbin/bao-kms-jwt-renew"
ISSUER_STAND_IN = "/usr/local/sbin/issue-kms-jwt"
NEXT_JWT = "/root/next.jwt"
RENEW = "bao-kms-jwt-renew"


def recipe() -> tuple[str, str, str]:
    """The script, service and timer: the first three code blocks under the recipe's heading."""
    text = DOC.read_text()
    section = text.split("### Recipe: a systemd timer", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```(?:sh|ini)\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3, f"{DOC}: expected script, service and timer blocks, found {len(blocks)}"
    return blocks[0], blocks[1], blocks[2]


def exp_of(jwt: str) -> str:
    payload = jwt.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))


def doctor_line(host, check: str) -> str:
    r = host.run(["bao-kms-provider", "doctor", "--config", CONFIG], check=False, timeout=60)
    lines = [l for l in r.stdout.splitlines() if l[5:].startswith(f"{check}:")]
    assert lines, r.stdout + r.stderr
    return lines[0]


def renewal_leftovers(host) -> list[str]:
    r = host.run(["find", "/var/lib/openbao-kms", "-name", ".identity.jwt.*"])
    return r.stdout.split()


def test_the_timer_recipe_renews_the_jwt_and_a_failed_run_keeps_the_old_one(host, bao):
    script, service, timer = recipe()
    install_units(host)
    host.write_file(CONFIG, provider_config(bao.addr, jwt_file=JWT), mode=0o640)
    host.run(["chown", "root:openbao-kms", CONFIG])
    first = bao.mint_jwt(ttl=3600)
    host.write_file(JWT, first + "\n", mode=0o600)
    host.run(["chown", "openbao-kms:openbao-kms", JWT])
    host.systemctl("daemon-reload")
    start_by_connecting(host)

    renewed = bao.mint_jwt(ttl=7200)
    host.write_file(NEXT_JWT, renewed + "\n", mode=0o600)
    host.write_file(ISSUER_STAND_IN, f"#!/bin/sh\ncat {NEXT_JWT}\n", mode=0o755)
    host.write_file(SCRIPT, script, mode=0o755)
    host.write_file(f"/etc/systemd/system/{RENEW}.service", service)
    host.write_file(f"/etc/systemd/system/{RENEW}.timer", timer)
    verify = host.run(["systemd-analyze", "verify", "--man=no",
                       f"/etc/systemd/system/{RENEW}.service", f"/etc/systemd/system/{RENEW}.timer"],
                      check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    host.systemctl("daemon-reload")
    host.systemctl("enable", "--now", f"{RENEW}.timer")
    assert host.systemctl("is-enabled", f"{RENEW}.timer").stdout.strip() == "enabled"
    assert host.systemctl("is-active", f"{RENEW}.timer").stdout.strip() == "active"

    # What the timer starts, started now rather than after OnBootSec.
    host.systemctl("start", f"{RENEW}.service")
    assert host.read_file(JWT).strip() == renewed
    owner = host.run(["stat", "-c", "%U:%G %a", JWT]).stdout.strip()
    assert owner == "openbao-kms:openbao-kms 600", owner
    assert renewal_leftovers(host) == []
    line = doctor_line(host, "credential-expiry")
    assert exp_of(renewed) in line, line
    login = doctor_line(host, "login")
    assert login.startswith("ok"), login

    # The issuer fails (prints nothing): the run fails and the JWT in place stays.
    host.write_file(NEXT_JWT, "", mode=0o600)
    failed = host.systemctl("start", f"{RENEW}.service", check=False)
    assert failed.returncode != 0
    result = host.systemctl("show", "-p", "Result", "--value", f"{RENEW}.service").stdout.strip()
    assert result == "exit-code", result
    assert host.read_file(JWT).strip() == renewed
    assert renewal_leftovers(host) == []
