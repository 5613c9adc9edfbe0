"""Credentials for a Flower federation: TLS certificates and SuperNode authentication keys.

Made with ``cryptography``. :func:`make_certificates` writes a small
certificate authority and a server certificate (TLS between the SuperLink and
its nodes); :func:`make_node_key` writes a SuperNode's key pair for
``--enable-supernode-auth`` (register the public key with
``flwr supernode register``). For a real federation use your organisation's
CA; these are for tests and trials.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

__all__ = ["make_certificates", "make_node_key"]


def make_certificates(
    directory: str, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *, days: int = 365
) -> dict[str, str]:
    """Write a certificate authority and a server certificate for ``hosts`` (TLS for a SuperLink).

    Made with ``cryptography`` (ECDSA P-256, SHA-256). Give the SuperLink
    ``certfile``/``keyfile``/``ca`` and each node and ``flwr`` the ``ca``
    file (``--root-certificates``). For a real federation use certificates of
    your organisation's CA; these are for tests and trials.

    Returns:
        ``{"ca": ..., "certfile": ..., "keyfile": ...}``, paths in ``directory``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedr test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": os.path.join(directory, "ca.pem"), "certfile": os.path.join(directory, "server.pem"),
             "keyfile": os.path.join(directory, "server.key")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["certfile"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["keyfile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


def make_node_key(directory: str, name: str = "node_key") -> dict[str, str]:
    """Write a SuperNode's ECDSA P-384 key pair in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384``).

    Give the SuperNode the private key (``supernode(private_key=)``,
    ``flower-supernode --auth-supernode-private-key``) and register the
    public key with the SuperLink (``flwr supernode register <public key>``)
    before it connects; a SuperLink started with ``--enable-supernode-auth``
    refuses nodes whose key is not registered.

    Returns:
        ``{"private": ..., "public": ...}``, paths in ``directory``; the private key is readable by its owner only.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    paths = {"private": os.path.join(directory, name), "public": os.path.join(directory, f"{name}.pub")}
    fd = os.open(paths["private"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    with open(paths["public"], "wb") as handle:
        handle.write(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH) + b"\n")
    return paths
