"""The worker's commands against a secured cluster: TLS and SASL SCRAM-SHA-512 logins.

A broker of its own (the development broker with its SASL_SSL listener, a CA made for
it and one SCRAM user), started by this module only: the other integration tests keep
the plaintext broker of ``conftest.py``.  The credentials reach the commands as a
Kubernetes Secret gives them, in ``STAMP_WORKER__KAFKA__COMMON__*`` variables, and every
command runs as a user runs it (a subprocess), so that everything it prints is checked
for the password.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.net import free_port
from worker.decode.packets import synthetic_alert
from worker.tools import devbroker

ALERTS = 12
USER = "stamp-classifier"
COMMAND_TIMEOUT_S = 300  # a hung command fails the test instead of hanging it


@dataclass
class Secured:
    """The secured broker and everything its commands printed (checked for the password)."""

    broker: devbroker.Broker
    password: str
    ca: Path
    untrusted_ca: Path
    transcript: list[str] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        """A command's environment: the credentials as a Secret gives them."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("STAMP_WORKER")}
        assert self.broker.sasl_ssl_bootstrap_servers is not None
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.sasl_ssl_bootstrap_servers,
            "STAMP_WORKER__KAFKA__COMMON__SECURITY_PROTOCOL": "SASL_SSL",
            "STAMP_WORKER__KAFKA__COMMON__SASL_MECHANISM": "SCRAM-SHA-512",
            "STAMP_WORKER__KAFKA__COMMON__SASL_USERNAME": USER,
            # The dotted spelling, as a Secret's key may give it through envFrom.
            "STAMP_WORKER__KAFKA__COMMON__SASL.PASSWORD": self.password,
            "STAMP_WORKER__KAFKA__COMMON__SSL_CA_LOCATION": str(self.ca),
            "STAMP_WORKER__KAFKA__CONNECT_TIMEOUT_S": "30",
            "STAMP_WORKER__METRICS__PORT": "0",  # no server unless a test scrapes it
            **overrides})
        return env

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``stamp-worker ARGS``; its output joins the transcript."""
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        print(f"stamp-worker {' '.join(args[:1])}: exit {done.returncode} in "
              f"{time.monotonic() - started:.1f} s")
        self.transcript += [done.stdout, done.stderr]
        return done


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A broker with a SASL_SSL listener, for this module only."""
    folder = tmp_path_factory.mktemp("kafka-secured")
    password = secrets.token_urlsafe(24)
    try:
        broker = devbroker.start(folder / "broker",
                                 sasl_ssl=devbroker.SaslSsl(USER, password))
    except devbroker.DevBrokerError as exc:
        pytest.fail(f"cannot start the development Kafka broker with its SASL_SSL "
                    f"listener: {exc}", pytrace=False)
    # A CA of its own, which did not sign the broker's certificate.
    other = devbroker.make_certificates(folder / "other-ca")
    try:
        yield Secured(broker, password, broker.ca_file, other.ca)
    finally:
        broker.stop()


def _names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {"INPUT": f"sec-alerts-{suffix}", "OUTPUT": f"sec-labels-{suffix}",
            "DEAD_LETTER": f"sec-dead-{suffix}"}


def _topic_env(names: dict[str, str]) -> dict[str, str]:
    return {f"STAMP_WORKER__TOPICS__{key}": value for key, value in names.items()}


def _scrape_while_running(process: subprocess.Popen[str], port: int) -> str:
    """The last ``/metrics`` page the running worker served (bounded by its run)."""
    page = ""
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                page = r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not serving yet, or already stopping
        time.sleep(0.2)
    return page


def test_topics_replay_worker_and_labels_through_sasl_ssl(secured: Secured,
                                                          tmp_path: Path) -> None:
    names = _names()
    env = secured.env(**_topic_env(names))

    done = secured.run(["topics", "--partitions", "2"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created") == 3

    alerts = tmp_path / "alerts"
    alerts.mkdir()
    for i in range(ALERTS):
        (alerts / f"{i}.avro").write_bytes(synthetic_alert(i))
    # replay reads the same STAMP_WORKER__KAFKA__COMMON__* variables: no password on
    # its command line.
    done = secured.run(["replay", str(alerts), "--topic", names["INPUT"], "-q"], env)
    assert done.returncode == 0, done.stderr
    assert f"sent {ALERTS}, failed 0" in done.stderr

    port = free_port()
    run_env = {**env, "STAMP_WORKER__METRICS__PORT": str(port),
               "STAMP_WORKER__GROUP_ID": f"sec-group-{uuid.uuid4().hex[:8]}"}
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--until-idle", "5"],
                          cwd=REPO, env=run_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as process:
        metrics = _scrape_while_running(process, port)
        out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
    print(f"stamp-worker run: exit {process.returncode} in {time.monotonic() - started:.1f} s")
    secured.transcript += [out, err, metrics]
    assert process.returncode == 0, err[-3000:]
    assert "stamp_worker_alerts_consumed_total" in metrics
    # The configuration is logged at start, its secret redacted.
    assert "'sasl.password': '<redacted>'" in err

    done = secured.run(["labels", "--topic", names["OUTPUT"]], env)
    assert done.returncode == 0, done.stderr
    labels = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(labels) == ALERTS, done.stderr
    assert {label["source_topic"] for label in labels} == {names["INPUT"]}
    assert done.stderr.startswith(f"{ALERTS} labels from {names['OUTPUT']}")

    for text in secured.transcript:
        assert secured.password not in text


# What each command is given, and what it must say: the setting to check, in one line.
_FAILURES = {
    "wrong password": ({"STAMP_WORKER__KAFKA__COMMON__SASL.PASSWORD": "not-the-password"},
                       "authentication failed at Kafka",
                       "check sasl.username/sasl.password"),
    "untrusted certificate": ({}, "certificate verify failed at Kafka",
                              "check ssl.ca.location"),
}


@pytest.mark.parametrize("command", ["topics", "replay", "run"])
@pytest.mark.parametrize("failure", list(_FAILURES))
def test_a_refused_login_or_an_untrusted_broker_stops_with_one_line(
        secured: Secured, tmp_path: Path, failure: str, command: str) -> None:
    overrides, what, check = _FAILURES[failure]
    if failure == "untrusted certificate":
        overrides = {"STAMP_WORKER__KAFKA__COMMON__SSL_CA_LOCATION": str(secured.untrusted_ca)}
    names = _names()
    env = secured.env(**_topic_env(names), **overrides)
    args = {"topics": ["topics"],
            "replay": ["replay", str(tmp_path), "--topic", names["INPUT"], "-q",
                       "--connect-timeout", "30"],
            "run": ["run", "--until-idle", "5"]}[command]
    (tmp_path / "0.avro").write_bytes(synthetic_alert(0))

    done = secured.run(args, env)

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith(f"stamp-worker {command}: {what} "
                           f"{secured.broker.sasl_ssl_bootstrap_servers} ("), last
    assert check in last
    assert "Traceback" not in done.stderr
    for text in (done.stdout, done.stderr):
        assert secured.password not in text
        assert "not-the-password" not in text


README_SECTION = "### A secured cluster (TLS + SASL)"


def test_the_readme_secured_cluster_steps_work_as_written(tmp_path: Path,
                                                          data_dir: Path) -> None:
    """The README's block: a SASL_SSL dev broker, its client.env, topics → labels."""
    from tests.integration.test_readme import copy_of_repository

    if not (REPO / ".venv" / "bin" / "stamp-worker").exists():
        pytest.skip("the block uses .venv/bin/stamp-worker: run `make venv` first")
    text = (REPO / "README.md").read_text()
    section = text[text.index(README_SECTION):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    clone = tmp_path / "clone"
    clone.mkdir()
    copy_of_repository(clone)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KAFKA_", "STAMP_WORKER"))}
    env["STAMP_WORKER__METRICS__PORT"] = "0"  # 9108 may be another worker's
    env["STAMP_KAFKA_CACHE"] = str(clone / ".cache" / "kafka")  # the copy's jar list
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    finally:
        subprocess.run([sys.executable, "deploy/kafka/kafka.py", "stop", "--dir",
                        ".cache/kafka/secured"], cwd=clone, env=env, capture_output=True,
                       timeout=60)
    print(f"README block: exit {done.returncode} in {time.monotonic() - started:.1f} s")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "SASL_SSL listener 127.0.0.1:" in output
    assert "sent 200, failed 0" in output, output[-4000:]
    assert "stopped cleanly after 200 messages" in output, output[-4000:]
    assert len([line for line in done.stdout.splitlines()
                if line.startswith('{"objectId"')]) == 2, done.stdout
    assert "deleted " in output  # stop --wipe found the broker folder it made
