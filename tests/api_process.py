"""``aaa-vpn serve api`` as a process for tests: started on port 0 (the port
is read from its log), spoken to over real HTTP(S) with the standard library's
client, stopped by its PID."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aaa_vpn.lab.processes import listening_port

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=stdin,
    )


def self_signed(directory: Path, address: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``address`` and its key (mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaa-vpn test api")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.pem", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class ApiProcess:
    """One ``aaa-vpn serve api`` process."""

    db: str
    key_file: Path
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)
    tls: tuple[Path, Path] | None = None
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None

    def make_tokens(self, **roles: tuple[str, ...]) -> None:
        """A token per name with its roles, through ``aaa-vpn api token``."""
        tokens_file = self.tmp / "api-tokens"
        for name, granted in roles.items():
            done = cli(
                "--json", "api", "token", name, *(f"--role={r}" for r in granted), "--tokens-file", str(tokens_file)
            )
            assert done.returncode == 0, done.stderr
            self.tokens[name] = json.loads(done.stdout)["token"]

    def start(self) -> ApiProcess:
        self.log = self.tmp / "api.log"
        args = [sys.executable, "-m", "aaa_vpn.cli", "--db", self.db, "--key-file", str(self.key_file)]
        args += ["serve", "api", "--listen", "127.0.0.1", "--port", "0", "--tokens-file", str(self.tmp / "api-tokens")]
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        args += ["--log-level", "debug", *self.extra]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while (port := listening_port(self.log)) is None:
            assert self.process.poll() is None, f"serve api exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"serve api is not listening:\n{self.log.read_text()}"
            time.sleep(0.05)
        self.port = port
        return self

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        context = ssl.create_default_context(cafile=str(self.tls[0]))
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=context)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def call(self, method: str, path: str, token: str | None = None, body: object = None) -> Reply:
        """An API call as operator ``token`` (a name in :attr:`tokens`, or a raw value)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        return self.request(method, path, data, headers)
