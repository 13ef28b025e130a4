"""Per-export x509 material (no QEMU needed): what the certificates say, where files go."""

from __future__ import annotations

import ipaddress
import ssl
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from freezeframe.blockdata.nbdexport import ExportCredentials, ExportInfo, client_context


def test_certificates_are_made_for_this_export():
    creds = ExportCredentials.create("192.0.2.7")
    ca = x509.load_pem_x509_certificate(creds.ca_cert.encode())
    server = x509.load_pem_x509_certificate(creds.server_cert.encode())
    client = x509.load_pem_x509_certificate(creds.client_cert.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([usage])
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert 1 <= lifetime.days <= 2
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    dns = x509.load_pem_x509_certificate(ExportCredentials.create("compute-3.example").server_cert.encode())
    assert dns.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["compute-3.example"]
    # every export has its own CA
    other = ExportCredentials.create("192.0.2.7")
    assert x509.load_pem_x509_certificate(other.ca_cert.encode()).subject != ca.subject


def test_server_dir_and_client_material(tmp_path):
    creds = ExportCredentials.create("127.0.0.1")
    d = creds.write_server_dir(tmp_path / "tls")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ca-cert.pem", "dh-params.pem", "server-cert.pem", "server-key.pem"]
    assert all(stat.S_IMODE((d / n).stat().st_mode) == 0o600 for n in names)
    material = creds.client_material()
    assert set(material) == {"ca_cert", "client_cert", "client_key"}
    assert "PRIVATE KEY" in material["client_key"] and creds.server_key not in str(material)
    ctx = client_context(material)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1                      # this CA only, no system store
    info = ExportInfo("127.0.0.1", 10809, "vda", True, material)
    assert ExportInfo.from_dict(info.to_dict()) == info
