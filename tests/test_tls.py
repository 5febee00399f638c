"""gRPC over TLS and mutual TLS, with certificates made here (cryptography) and tritonclient as the
client; a plaintext client, or under mutual TLS a client without a certificate, is refused."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, Server, serve_command, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, ca: bool
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tensorgate test CA", ca_key, None, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, (ca.subject, ca_key), ca=False)
        files[f"{who}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{who}.key"] = _pem_key(key)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repo", path)
    return path


@pytest.fixture
def tls_server(repo: Path, pki: dict[str, Path]) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*extra: str) -> Server:
        flags = ["--grpc-tls-cert", str(pki["server.pem"]), "--grpc-tls-key", str(pki["server.key"]), *extra]
        server = Server(repo, *flags, wait_ready=False)
        started.append(server)
        wait_for(lambda: "event=server_ready" in server.log or server.proc.poll() is not None, 60)
        assert server.proc.poll() is None, server.log
        return server

    yield start
    for server in started:
        assert server.stop() == 0, server.log


def _client(server: Server, pki: dict[str, Path], with_certificate: bool) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        server.url,
        ssl=True,
        root_certificates=str(pki["ca.pem"]),
        private_key=str(pki["client.key"]) if with_certificate else None,
        certificate_chain=str(pki["client.pem"]) if with_certificate else None,
    )


def _identity(client: grpcclient.InferenceServerClient) -> np.ndarray:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer("identity", [tensor], client_timeout=10).as_numpy("OUTPUT0")
    assert out is not None
    return out


def test_tls_serves_tritonclient_and_refuses_plaintext(tls_server: Callable[..., Server], pki: dict[str, Path]) -> None:
    server = tls_server()
    assert "tls=on" in server.log
    client = _client(server, pki, with_certificate=False)
    assert client.is_server_ready()
    np.testing.assert_array_equal(_identity(client), np.arange(16, dtype=np.float32).reshape(1, 16))
    client.close()
    plain = grpcclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as refused:
        plain.is_server_live(client_timeout=5)
    assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
    plain.close()


def test_mutual_tls_needs_a_client_certificate(tls_server: Callable[..., Server], pki: dict[str, Path]) -> None:
    server = tls_server("--grpc-tls-client-ca", str(pki["ca.pem"]))
    assert "tls=mutual" in server.log
    with_cert = _client(server, pki, with_certificate=True)
    assert with_cert.is_server_live() and _identity(with_cert).shape == (1, 16)
    with_cert.close()
    without = _client(server, pki, with_certificate=False)
    with pytest.raises(InferenceServerException) as refused:
        without.is_server_live(client_timeout=5)
    assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
    without.close()


@pytest.mark.parametrize("flags", [["--grpc-tls-cert", "x.pem"], ["--grpc-tls-client-ca", "ca.pem"]])
def test_half_a_tls_setup_stops_the_start_with_the_reason(tmp_path: Path, flags: list[str]) -> None:
    done = subprocess.run(
        [*serve_command(tmp_path, 0, -1), *flags], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1 and "event=startup_failed" in done.stderr and "--grpc-tls-" in done.stderr, done.stderr


@pytest.mark.parametrize("content", [b"", b"not a certificate"])
def test_an_unusable_client_ca_stops_the_start_naming_it(tmp_path: Path, pki: dict[str, Path], content: bytes) -> None:
    """An empty or broken --grpc-tls-client-ca (a secret whose ca.crt is empty): gRPC would start and
    refuse every client, or fail with a misleading bind error; the start fails naming the file."""
    ca = tmp_path / "ca.crt"
    ca.write_bytes(content)
    flags = ["--grpc-tls-cert", str(pki["server.pem"]), "--grpc-tls-key", str(pki["server.key"])]
    done = subprocess.run(
        [*serve_command(tmp_path, 0, -1), *flags, "--grpc-tls-client-ca", str(ca)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "event=startup_failed" in done.stderr, done.stderr
    assert f"cannot use the client CA file {ca}" in done.stderr and "cannot listen" not in done.stderr, done.stderr


def test_renewed_certificates_are_taken_without_a_restart(tmp_path: Path, repo: Path, pki: dict[str, Path]) -> None:
    """The server's certificate and key files are replaced by a pair from another CA (a renewal
    with a rotated CA): new connections get the new certificate, with no restart; a renewal caught
    half-written (new certificate, old key) keeps the pair in use and says why."""
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(pki["server.pem"], cert)
    shutil.copy(pki["server.key"], key)
    server = Server(repo, "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key), wait_ready=False)
    try:
        wait_for(lambda: "event=server_ready" in server.log or server.proc.poll() is not None, 60)
        old = _client(server, pki, with_certificate=False)
        assert _identity(old).shape == (1, 16)
        old.close()
        other = _other_pki(tmp_path / "other")
        cert.write_bytes(other["server.pem"].read_bytes())  # half-written: the key is still the old one
        fresh = _client(server, pki, with_certificate=False)
        assert _identity(fresh).shape == (1, 16)  # still the old pair
        fresh.close()
        wait_for(lambda: "event=tls_reload_failed" in server.log, 10)
        key.write_bytes(other["server.key"].read_bytes())
        renewed = _client(server, other, with_certificate=False)
        assert _identity(renewed).shape == (1, 16)
        renewed.close()
        assert "event=tls_reloaded" in server.log
        stale = _client(server, pki, with_certificate=False)
        with pytest.raises(InferenceServerException):
            stale.is_server_live(client_timeout=5)
        stale.close()
    finally:
        assert server.stop() == 0, server.log


def _other_pki(out: Path) -> dict[str, Path]:
    out.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("another CA", ca_key, None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": _certificate("server", key, (ca.subject, ca_key), ca=False).public_bytes(
            serialization.Encoding.PEM
        ),
        "server.key": _pem_key(key),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}
