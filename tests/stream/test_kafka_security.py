"""Security settings without a broker: kafka.common, secrets kept out of text, the one-line
reasons for a refused login or an untrusted certificate, the dev broker's TLS files.

The same paths against a real SASL_SSL listener: tests/integration/test_secured.py.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from worker.decode.packets import synthetic_alert
from worker.stream.cluster import _security_failure, _security_message
from worker.stream.config import (
    REDACTED,
    ConfigError,
    KafkaConfig,
    kafka_common_from_env,
    load_config,
    to_dict,
)
from worker.tools import devbroker
from worker.tools.replay import replay_command

SECURE = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
          "sasl.username": "stamp-classifier"}
TOPICS = {"STAMP_WORKER__TOPICS__INPUT": "a", "STAMP_WORKER__TOPICS__OUTPUT": "b",
          "STAMP_WORKER__TOPICS__DEAD_LETTER": "c", "KAFKA_BOOTSTRAP_SERVERS": "k:9093"}

# librdkafka's lines, as its log gives them (confluent-kafka 2.x, OpenSSL 3).
AUTH_LINE = ("FAIL [rdkafka#consumer-4] [thrd:sasl_ssl://127.0.0.1:52489/bootstrap]: "
             "sasl_ssl://127.0.0.1:52489/bootstrap: SASL authentication error: "
             "Authentication failed during authentication due to invalid credentials with "
             "SASL mechanism SCRAM-SHA-512 (after 383ms in state AUTH_REQ)")
CERT_LINE = ("FAIL [rdkafka#consumer-5] [thrd:sasl_ssl://127.0.0.1:52489/bootstrap]: "
             "sasl_ssl://127.0.0.1:52489/bootstrap: SSL handshake failed: "
             "error:0A000086:SSL routines::certificate verify failed: broker certificate "
             "could not be verified, verify that ssl.ca.location is correctly configured or "
             "root CA certificates are installed (install ca-certificates package) "
             "(after 10ms in state SSL_HANDSHAKE)")


def test_common_settings_reach_both_clients_under_their_own() -> None:
    kafka = KafkaConfig("k:9093", common={**SECURE, "sasl.password": "pw"},
                        consumer={"session.timeout.ms": 10000},
                        producer={"sasl.username": "producer-user"})
    consumer = kafka.client_settings("consumer")
    producer = kafka.client_settings("producer")
    assert consumer == {**SECURE, "sasl.password": "pw", "session.timeout.ms": 10000,
                        "bootstrap.servers": "k:9093"}
    assert producer["sasl.username"] == "producer-user"  # the client's own wins
    assert producer["sasl.password"] == "pw" and "session.timeout.ms" not in producer


def test_the_secret_from_the_environment_is_common_and_kept_as_text() -> None:
    env = {**TOPICS, **{f"STAMP_WORKER__KAFKA__COMMON__{k.upper().replace('.', '_')}": v
                        for k, v in SECURE.items()},
           # A Secret's key may keep the dots; a password that reads as a number stays text.
           "STAMP_WORKER__KAFKA__COMMON__SASL.PASSWORD": "1.50"}
    config = load_config(env=env)
    assert dict(config.kafka.common) == {**SECURE, "sasl.password": "1.50"}
    assert config.kafka.client_settings("producer")["sasl.password"] == "1.50"
    assert kafka_common_from_env(env) == {**SECURE, "sasl.password": "1.50"}


def test_the_password_is_in_no_text_of_the_configuration() -> None:
    env = {**TOPICS, "STAMP_WORKER__KAFKA__COMMON__SECURITY_PROTOCOL": "SASL_SSL",
           "STAMP_WORKER__KAFKA__COMMON__SASL_MECHANISM": "SCRAM-SHA-512",
           "STAMP_WORKER__KAFKA__COMMON__SASL_USERNAME": "u",
           "STAMP_WORKER__KAFKA__COMMON__SASL_PASSWORD": "hunter2-secret"}
    config = load_config(env=env)
    text = repr(config) + str(config) + repr(config.kafka) + yaml.safe_dump(to_dict(config))
    assert "hunter2-secret" not in text
    assert to_dict(config)["kafka"]["common"]["sasl.password"] == REDACTED
    # A wrong value of a secret is refused without being shown.
    with pytest.raises(ConfigError) as error:
        KafkaConfig("k:1", common={"sasl.password": ["hunter2-secret"]})
    assert "hunter2-secret" not in str(error.value)
    assert 'kafka.common["sasl.password"]' in str(error.value)


@pytest.mark.parametrize(("common", "where", "says"), [
    ({"session.timeout.ms": 1000}, 'kafka.common["session.timeout.ms"]',
     "move it to kafka.consumer"),
    ({"linger.ms": 5}, 'kafka.common["linger.ms"]', "move it to kafka.producer"),
    ({"group.id": "g"}, 'kafka.common["group.id"]', "set that key instead"),
    ({"bootstrap.servers": "x:1"}, 'kafka.common["bootstrap.servers"]',
     "kafka.bootstrap_servers"),
    ({"enable.auto.commit": True}, 'kafka.common["enable.auto.commit"]', "must not be true"),
    ({"security.protocl": "SASL_SSL"}, 'kafka.common["security.protocl"]',
     "no such property"),
    # Refused by both clients: named once, as the common part's.
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}, "kafka.common",
     "sasl.username and sasl.password must be set"),
])
def test_a_wrong_common_property_is_named_where_it_was_set(common: dict, where: str,
                                                           says: str) -> None:
    with pytest.raises(ConfigError) as error:
        KafkaConfig("k:1", common=common)
    problems = error.value.problems
    assert {key for key, _ in problems} == {where}, problems
    assert any(says in message for _, message in problems), problems


def test_kafka_common_from_env_names_a_variable_without_a_property() -> None:
    with pytest.raises(ConfigError, match="STAMP_WORKER__KAFKA__COMMON: kafka.common takes "
                                          "one property per variable"):
        kafka_common_from_env({"STAMP_WORKER__KAFKA__COMMON": "x"})
    assert kafka_common_from_env({"STAMP_WORKER__KAFKA__CONSUMER__ACKS": "1"}) == {}


def test_replay_names_a_wrong_property_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STAMP_WORKER__KAFKA__COMMON__SECURITY_PROTOCL", "SASL_SSL")
    (tmp_path / "0.avro").write_bytes(synthetic_alert(0))
    with pytest.raises(SystemExit) as stop:
        replay_command([str(tmp_path)], "t", "127.0.0.1:1", [], None, None, None, None,
                       None, 1.0, None, False, 10, None, True, None)  # type: ignore[arg-type]
    assert str(stop.value) == ("stamp-worker replay: security.protocl (from "
                               "STAMP_WORKER__KAFKA__COMMON__*): librdkafka has no such "
                               "property (see librdkafka's CONFIGURATION.md)")


def test_a_refused_login_and_an_untrusted_certificate_each_say_what_to_check() -> None:
    assert _security_failure(AUTH_LINE) == "auth"
    assert _security_failure(CERT_LINE) == "cert"
    assert _security_failure("FAIL [x]: h:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 "
                             "failed: Connection refused (after 0ms in state CONNECT)") is None
    auth = _security_message(AUTH_LINE, "k:9093")
    assert auth == ("authentication failed at Kafka k:9093 (SASL authentication error: "
                    "Authentication failed during authentication due to invalid credentials "
                    "with SASL mechanism SCRAM-SHA-512): check sasl.username/sasl.password "
                    "(and sasl.mechanism, e.g. SCRAM-SHA-512)")
    cert = _security_message(CERT_LINE, "k:9093")
    assert cert.startswith("certificate verify failed at Kafka k:9093 (SSL handshake failed: "
                           "error:0A000086:SSL routines::certificate verify failed): check "
                           "ssl.ca.location")
    assert "\n" not in auth + cert


def test_make_certificates_signs_a_broker_certificate_for_the_loopback_address(
        tmp_path: Path) -> None:
    files = devbroker.make_certificates(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    chain = x509.load_pem_x509_certificates(files.keystore.read_bytes())
    assert b"-----BEGIN PRIVATE KEY-----" in files.keystore.read_bytes()  # PKCS#8, for Kafka
    leaf = chain[0]
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(files.keystore.stat().st_mode) == 0o600
    # Another call: another CA, which does not vouch for the first broker.
    other = x509.load_pem_x509_certificate(
        devbroker.make_certificates(tmp_path / "other").ca.read_bytes())
    with pytest.raises((ValueError, TypeError)):
        leaf.verify_directly_issued_by(other)


def test_the_broker_listens_for_sasl_ssl_only_when_asked(tmp_path: Path) -> None:
    tls = devbroker.TlsFiles(tmp_path / "ca.pem", tmp_path / "broker.pem")
    plain = devbroker._server_properties(tmp_path, 9092, 9093)
    secure = devbroker._server_properties(tmp_path, 9092, 9093, (9094, tls))
    assert "SASL_SSL" not in plain and "ssl." not in plain
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094" \
        in secure
    assert "inter.broker.listener.name=PLAINTEXT" in secure
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in secure
    assert f"listener.name.sasl_ssl.ssl.keystore.location={tls.keystore}" in secure
    (tmp_path / "server.properties").write_text(secure)
    assert devbroker._previous_ports(tmp_path) == {"PLAINTEXT": 9092, "SASL_SSL": 9094}


def test_the_scram_credential_is_given_salted_never_as_the_password() -> None:
    user = devbroker.SaslSsl("stamp", "pass-word-1")
    argument = devbroker._scram_credential(user, iterations=4096)
    assert "pass-word-1" not in argument and "pass-word-1" not in repr(user)
    fields = dict(part.split("=", 1) for part in
                  argument.removeprefix("SCRAM-SHA-512=[").removesuffix("]").split(","))
    assert fields["name"] == "stamp" and fields["iterations"] == "4096"
    salt = base64.b64decode(fields["salt"].strip('"'))
    # RFC 5802: SaltedPassword := Hi(password, salt, i), PBKDF2 with HMAC-SHA-512 here.
    assert base64.b64decode(fields["saltedpassword"].strip('"')) == hashlib.pbkdf2_hmac(
        "sha512", b"pass-word-1", salt, 4096)
    with pytest.raises(devbroker.DevBrokerError, match="SCRAM user name"):
        devbroker._scram_credential(devbroker.SaslSsl("a,b", "x"))
