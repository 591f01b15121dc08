"""Cert auth with the client key on a PKCS#11 token, under systemd: the real units plus the
shipped drop-in (packaging/.../examples/pkcs11.conf, edited as docs/pkcs11.md says for
SoftHSM2), the PIN as a LoadCredential=, against a real OpenBao with a TLS listener on the
host's loopback. The key is generated on a SoftHSM2 token (non-extractable) on the host; the
token store is copied into the container's state directory, SoftHSM2's module beside it.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openbao import REPO_ROOT, BaoDevServer, provider_config, provider_policy  # noqa: E402
from provider_host import CONFIG, SOCKET, SOCKET_UNIT, UNIT, install_units  # noqa: E402

DROPIN = f"/etc/systemd/system/{UNIT}.d/pkcs11.conf"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SHIPPED_DROPIN = REPO_ROOT / "packaging/usr/share/doc/bao-kms-provider/examples/pkcs11.conf"
PIN = "5318008"


def sh(*args, env=None, cwd=None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{args[0]} failed (rc={r.returncode}): {r.stdout}{r.stderr}")
    return r.stdout


class SoftHsmToken:
    """A SoftHSM2 token store in a temp dir with one EC P-256 key generated on the token."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.store = workdir / "softhsm"
        self.store.mkdir()
        conf = workdir / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {self.store}\nobjectstore.backend = file\n"
                        "log.level = ERROR\n")
        env = dict(os.environ, SOFTHSM2_CONF=str(conf))
        if not Path(MODULE).exists():
            pytest.fail(f"SoftHSM2 is not installed ({MODULE}): run `make tools`", pytrace=False)
        sh("softhsm2-util", "--init-token", "--free", "--label", "bao-kms", "--so-pin",
           "87654321", "--pin", PIN, env=env)
        sh("pkcs11-tool", "--module", MODULE, "--token-label", "bao-kms", "--login", "--pin", PIN,
           "--keypairgen", "--key-type", "EC:prime256v1", "--label", "openbao-client",
           "--id", "a1b2", "--usage-sign", env=env)
        sh("pkcs11-tool", "--module", MODULE, "--token-label", "bao-kms", "--read-object",
           "--type", "pubkey", "--label", "openbao-client", "-o", workdir / "pub.der", env=env)
        sh("openssl", "pkey", "-pubin", "-inform", "DER", "-in", workdir / "pub.der",
           "-out", workdir / "pub.pem")

    def issue_cert(self) -> tuple[Path, Path]:
        """A test CA issues a client certificate for the token's public key; the CA key goes."""
        d = self.dir
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-days", "1", "-subj", "/CN=pkcs11 client CA", "-keyout", d / "cca.key",
           "-out", d / "cca.pem")
        (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        sh("openssl", "x509", "-new", "-subj", "/CN=bao-kms-provider", "-days", "1",
           "-force_pubkey", d / "pub.pem", "-CA", d / "cca.pem", "-CAkey", d / "cca.key",
           "-extfile", d / "client.ext", "-out", d / "client.pem")
        (d / "cca.key").unlink()
        return d / "cca.pem", d / "client.pem"


def dropin_for_softhsm(text: str) -> str:
    """The shipped drop-in as docs/pkcs11.md says to edit it for SoftHSM2: the TPM block
    deleted, the SoftHSM2 lines and LoadCredential= uncommented."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("# --- "):
            skipping = line.startswith("# --- TPM")
        if skipping:
            continue
        m = re.match(r"^#((ReadWritePaths=-/var/lib/openbao-kms/softhsm|Environment=SOFTHSM2_CONF="
                     r"|LoadCredential=token\.pin:).*)$", line)
        out.append(m.group(1) if m else line)
    return "\n".join(out) + "\n"


def test_pkcs11_key_under_systemd_with_the_shipped_dropin(host):
    with tempfile.TemporaryDirectory(prefix="p11-") as tmp:
        work = Path(tmp)
        token = SoftHsmToken(work)
        client_ca, client_cert = token.issue_cert()
        bao = BaoDevServer(tls=True).start()
        try:
            bao.setup(provider_policy(provider_config(bao.addr, ca_file=str(bao.ca))))
            bao.cli("auth", "enable", "cert")
            bao.cli("write", "auth/cert/certs/bao-kms-provider", "token_policies=bao-kms-provider",
                    f"certificate=@{client_ca}")
            run_provider(host, bao, token, client_cert)
        finally:
            bao.cleanup()


def run_provider(c, bao: BaoDevServer, token: SoftHsmToken, client_cert: Path) -> None:
    install_units(c)
    # SoftHSM2's module and the token store (owned by the service user, in its state dir).
    c.copy_in(MODULE, MODULE, mode=0o644)
    c.run("install -d -o openbao-kms -g openbao-kms -m 0700 /var/lib/openbao-kms")
    c.copy_in(token.store, "/var/lib/openbao-kms/softhsm", mode=0o700)
    c.run(["chown", "-R", "openbao-kms:openbao-kms", "/var/lib/openbao-kms/softhsm"])
    c.write_file("/etc/openbao-kms/softhsm2.conf",
                 "directories.tokendir = /var/lib/openbao-kms/softhsm\n"
                 "objectstore.backend = file\nlog.level = ERROR\n")
    c.copy_in(client_cert, "/etc/openbao-kms/tls/client.pem", mode=0o644)
    c.copy_in(bao.ca, "/etc/openbao-kms/tls/openbao-ca.pem", mode=0o644)
    # The PIN only root can read; the service gets it as a credential.
    c.write_file("/etc/openbao-kms/token.pin", PIN + "\n", mode=0o600)
    config = provider_config(bao.addr, ca_file="/etc/openbao-kms/tls/openbao-ca.pem").replace(
        '[auth]\nmethod = "jwt"\n[auth.jwt]\njwt_file = "/etc/openbao-kms/identity.jwt"\n',
        '[auth]\nmethod = "cert"\n[auth.cert]\nname = "bao-kms-provider"\n'
        'cert_file = "/etc/openbao-kms/tls/client.pem"\nkey_source = "pkcs11"\n'
        f'module_path = "{MODULE}"\ntoken_label = "bao-kms"\nkey_label = "openbao-client"\n'
        'pin_file = "%d/token.pin"\n')
    assert 'key_source = "pkcs11"' in config
    c.write_file(CONFIG, config, mode=0o640)
    c.run(["chown", "root:openbao-kms", CONFIG])
    dropin = dropin_for_softhsm(SHIPPED_DROPIN.read_text())
    assert "DeviceAllow=/dev/tpmrm0" not in dropin and "LoadCredential=token.pin:" in dropin
    c.write_file(DROPIN, dropin)
    c.systemctl("daemon-reload")

    # The drop-in leaves the sandbox's device policy closed.
    shown = c.systemctl("show", UNIT, "-p", "DevicePolicy", "-p", "PrivateDevices",
                        "-p", "ProtectSystem").stdout
    assert "DevicePolicy=closed" in shown and "ProtectSystem=strict" in shown, shown

    c.systemctl("enable", "--now", SOCKET_UNIT)
    r = c.run(["bao-kms-provider", "probe", "--socket", SOCKET, "--timeout", "10s"], check=False,
              timeout=60)
    journal = "\n".join(str(e.get("MESSAGE")) for e in c.journal(unit=UNIT))
    assert "result:   OK" in r.stdout, f"{r.stdout}{r.stderr}\n{journal}"
    assert 'method="cert"' in journal or "logged in to OpenBao" in journal, journal

    # SIGHUP re-reads pin_file and cert_file and logs in again over a new handshake.
    n = len(c.journal(unit=UNIT))
    c.systemctl("reload", UNIT)
    deadline = time.monotonic() + 20
    while True:
        later = [str(e.get("MESSAGE")) for e in c.journal(unit=UNIT)[n:]]
        if any(m == "reloaded: new OpenBao client and credentials in use" for m in later):
            break
        assert time.monotonic() < deadline, "\n".join(later)
        time.sleep(0.2)
    r = c.run(["bao-kms-provider", "probe", "--socket", SOCKET, "--timeout", "10s"], timeout=60)
    assert "result:   OK" in r.stdout, r.stdout
    journal = "\n".join(str(e.get("MESSAGE")) for e in c.journal(unit=UNIT))
    assert PIN not in journal, "the PIN must never be logged"
