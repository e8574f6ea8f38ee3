"""A single-node Apache Kafka 4 broker (KRaft, combined mode) for development and tests.

The demo, the integration tests and CI run against a real broker without Docker or a
downloaded Kafka distribution: the broker's jars come from Maven Central through
``deploy/kafka/pom.xml`` (Maven caches them in ``~/.m2``; the resolved classpath is kept
in ``.cache/kafka/``, so only the first start needs the network and ``mvn``), and the
broker runs as ``java kafka.Kafka server.properties`` with one node that is both broker
and controller.

Python use::

    from worker.tools.devbroker import start

    with start() as broker:          # free ports, temporary folder, removed on stop
        produce_to(broker.bootstrap_servers)

Command line (``python deploy/kafka/kafka.py``, or ``python -m worker.tools.devbroker``)::

    start [--port N] [--dir D]   start detached, print KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:N
    start --sasl-ssl [--sasl-ssl-port N]
                                 also a SASL_SSL listener (SCRAM-SHA-512, user ``stamp``);
                                 its client settings go to D/tls/client.env, as
                                 KAFKA_BOOTSTRAP_SERVERS and STAMP_WORKER__KAFKA__COMMON__*
                                 lines (the password is made once per folder)
    stop [--dir D]               stop the broker of that folder
    status [--dir D]             say whether it runs and where (exit status 1 if not)

A secured listener, as production brokers have (TLS, and SCRAM-SHA-512 logins), can run
beside the plaintext one: ``start(sasl_ssl=SaslSsl(username, password))``.  Its
certificate is signed by a CA made for the broker folder (``tls/ca.pem``, what clients
give as ``ssl.ca.location``; :func:`make_certificates`), and the SCRAM credentials are
written into the cluster's metadata when the storage is formatted.  The broker itself
(KRaft controller, replication) stays on plaintext listeners.

The default folder is ``.cache/kafka/run`` in the repository.  A folder keeps its topics
across stop/start; delete it for a fresh broker.  Environment: ``JAVA_HOME`` (else
``java`` on ``PATH``), ``KAFKA_HEAP_OPTS`` (default ``-Xms128m -Xmx512m``),
``STAMP_KAFKA_POM`` and ``STAMP_KAFKA_CACHE`` (other pom / cache folder).

Only the standard library and confluent-kafka are used, and ``cryptography`` for the
SASL_SSL listener's certificates.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from worker.stream.processes import die_with_parent

REPO = Path(__file__).resolve().parents[2]
POM = Path(os.environ.get("STAMP_KAFKA_POM", REPO / "deploy" / "kafka" / "pom.xml"))
CACHE_DIR = Path(os.environ.get("STAMP_KAFKA_CACHE", REPO / ".cache" / "kafka"))
DEFAULT_RUN_DIR = CACHE_DIR / "run"
DEFAULT_HEAP_OPTS = "-Xms128m -Xmx512m"
HOST = "127.0.0.1"

# What Kafka's own kafka-run-class.sh passes, less what does not matter on a dev machine.
JVM_OPTS = (
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
    # Log4j's own shutdown hook would stop logging before Kafka logs its shutdown.
    "-Dlog4j2.shutdownHookEnabled=false",
)

_STATE_FILE = "broker.json"
_SCRAM_ITERATIONS = 8192  # Kafka's default for SCRAM credentials (4096 is its minimum)
_PID_FILE = "kafka.pid"
_LOG = logging.getLogger(__name__)


class DevBrokerError(RuntimeError):
    """The development broker cannot be resolved, formatted, started or stopped."""


@dataclass(frozen=True, repr=False)
class SaslSsl:
    """A SASL_SSL listener (TLS, SCRAM-SHA-512 logins) beside the plaintext one.

    Parameters
    ----------
    username, password : str
        The one SCRAM-SHA-512 user the listener accepts.
    port : int, optional
        Its port on 127.0.0.1; default the port the folder used last time if free, else
        a free one.
    """

    username: str
    password: str
    port: int | None = None

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return f"SaslSsl(username={self.username!r}, password='<redacted>', port={self.port})"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test certificate authority and the broker certificate it signed.

    Attributes
    ----------
    ca : Path
        The CA's certificate: what clients give as ``ssl.ca.location``.
    keystore : Path
        The broker's private key (PKCS#8, unencrypted) followed by its certificate and
        the CA's, as Kafka reads a PEM key store (``ssl.keystore.type=PEM``).
    """

    ca: Path
    keystore: Path


# ---------------------------------------------------------------------------- tools


def find_java() -> str:
    """Return the ``java`` executable: ``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``.

    Raises
    ------
    DevBrokerError
        Neither exists; the message says what to install.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise DevBrokerError(
            "java not found: the development Kafka broker needs a Java 17+ runtime. Install "
            "one (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME, "
            "or point the tests at a running broker with KAFKA_BOOTSTRAP_SERVERS.")
    return java


def _find_mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevBrokerError(
            f"mvn not found: the Kafka broker's jars are resolved once with Maven from {POM}. "
            "Install Maven 3.6+ (Debian/Ubuntu: apt-get install maven) and run again; later "
            f"starts use the classpath cached in {CACHE_DIR} and need neither Maven nor the "
            "network.")
    return mvn


def _classpath_file(pom: Path, cache_dir: Path) -> Path:
    return cache_dir / f"classpath-{hashlib.sha256(pom.read_bytes()).hexdigest()[:16]}.txt"


def _cached_classpath(cached: Path) -> str | None:
    """The cached classpath when every jar it lists is still there."""
    if cached.is_file():
        classpath = cached.read_text().strip()
        if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath
    return None


def classpath_cached(pom: Path | None = None, cache_dir: Path | None = None) -> bool:
    """Whether the broker can start without Maven (its jars resolved and still there)."""
    pom = Path(pom or POM)
    return pom.is_file() and _cached_classpath(
        _classpath_file(pom, Path(cache_dir or CACHE_DIR))) is not None


def resolve_classpath(pom: Path | None = None, cache_dir: Path | None = None) -> str:
    """Return the broker's Java classpath, resolving it with Maven only when not cached.

    The classpath is cached in ``cache_dir/classpath-<hash of the pom>.txt``; it is
    resolved again when the pom changes or a jar it lists has gone (``~/.m2`` emptied).

    Parameters
    ----------
    pom : Path, optional
        The Maven project listing the broker (default ``deploy/kafka/pom.xml``).
    cache_dir : Path, optional
        Where the classpath file is kept (default ``.cache/kafka``).

    Returns
    -------
    str
        Jar paths joined with ``os.pathsep``.

    Raises
    ------
    DevBrokerError
        The pom is missing, ``mvn`` is missing, or Maven fails (the message carries the end
        of Maven's output).
    """
    pom = Path(pom or POM)
    cache_dir = Path(cache_dir or CACHE_DIR)
    if not pom.is_file():
        raise DevBrokerError(
            f"{pom} not found: the broker's jars are listed there. Run from a checkout of the "
            "repository, or set STAMP_KAFKA_POM to that file.")
    cached = _classpath_file(pom, cache_dir)
    classpath = _cached_classpath(cached)
    if classpath:
        return classpath
    mvn = _find_mvn()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{cached.stem}.{os.getpid()}.tmp"
    command = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
               "dependency:build-classpath", "-Dmdep.includeScope=runtime",
               f"-Dmdep.outputFile={partial}"]
    _LOG.info("resolving the Kafka broker's classpath: %s", shlex.join(command))
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise DevBrokerError(
            f"Maven could not resolve the Kafka broker's jars (exit {done.returncode}) with "
            f"`{shlex.join(command)}`. It needs Maven Central the first time (or the jars "
            f"already in ~/.m2). Maven said:\n{_tail(done.stdout, 40)}")
    os.replace(partial, cached)
    return cached.read_text().strip()


# ---------------------------------------------------------------------------- broker


class Broker:
    """A running development broker, returned by :func:`start` or :meth:`attach`.

    Parameters
    ----------
    data_dir : Path
        Its folder: ``server.properties``, ``data/`` (the log dirs), ``logs/``.
    port, controller_port : int
        The client (PLAINTEXT) and KRaft controller listeners, both on 127.0.0.1.
    pid : int
        The JVM's process id (it leads its own session, so its group id too).
    process : subprocess.Popen, optional
        The child, when this process started it; ``None`` when attached from a pidfile.
    remove_dir : bool
        Delete ``data_dir`` on :meth:`stop` (a temporary folder :func:`start` made).
    sasl_ssl_port : int, optional
        The SASL_SSL client listener on 127.0.0.1, when the broker has one.
    """

    def __init__(self, data_dir: Path, port: int, controller_port: int, pid: int,
                 process: subprocess.Popen[bytes] | None = None,
                 remove_dir: bool = False, sasl_ssl_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.controller_port = controller_port
        self.sasl_ssl_port = sasl_ssl_port
        self.pid = pid
        self._process = process
        self._remove_dir = remove_dir
        self._stopped = False

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for the clients' ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str | None:
        """``host:port`` of the SASL_SSL listener, or ``None`` when there is none."""
        return None if self.sasl_ssl_port is None else f"{HOST}:{self.sasl_ssl_port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate that signed the SASL_SSL listener's (``ssl.ca.location``)."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def log_file(self) -> Path:
        """The broker's log (log4j2), where to look when something goes wrong."""
        return self.data_dir / "logs" / "server.log"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"Broker({self.bootstrap_servers}, pid={self.pid}, {state}, {self.data_dir})"

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @classmethod
    def attach(cls, data_dir: Path) -> Broker | None:
        """Return the broker running from ``data_dir`` (started detached), or ``None``."""
        data_dir = Path(data_dir).resolve()
        try:
            state = json.loads((data_dir / _STATE_FILE).read_text())
            pid = int((data_dir / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        secure = state.get("sasl_ssl_port")
        broker = cls(data_dir, int(state["port"]), int(state["controller_port"]), pid,
                     sasl_ssl_port=None if secure is None else int(secure))
        return broker if broker.is_running() else None

    def is_running(self) -> bool:
        """Whether the broker's JVM is still alive (and is this broker, not a reused pid)."""
        if self._stopped:
            return False
        if self._process is not None:
            return self._process.poll() is None
        return _is_our_jvm(self.pid, self.data_dir)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), then SIGKILL after ``timeout``.

        Calling it again, or on a broker that already exited, does nothing more.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the clean shutdown before killing it.
        """
        if self._stopped:
            return
        if self.is_running():
            self._signal(signal.SIGTERM)
            if not self._wait_gone(timeout):
                _LOG.warning("Kafka broker pid %d still running %.0f s after SIGTERM: killing "
                             "it", self.pid, timeout)
                self._signal(signal.SIGKILL)
                self._wait_gone(10.0)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)  # reap
        self._stopped = True
        for name in (_PID_FILE, _STATE_FILE):
            (self.data_dir / name).unlink(missing_ok=True)
        if self._remove_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)  # the JVM leads its own session/process group
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                try:
                    self._process.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not _is_our_jvm(self.pid, self.data_dir):
                return True
            time.sleep(0.1)
        return not self.is_running()


def start(data_dir: Path | None = None, port: int | None = None, *,
          controller_port: int | None = None, timeout: float = 60.0,
          detach: bool = False, heap_opts: str | None = None,
          sasl_ssl: SaslSsl | None = None) -> Broker:
    """Start a single-node KRaft broker and wait until it answers clients.

    Parameters
    ----------
    data_dir : Path, optional
        The broker's folder, created if needed; an already formatted one is reused (its
        topics and committed offsets survive a restart).  Default: a temporary folder,
        deleted by :meth:`Broker.stop`.
    port : int, optional
        The client port on 127.0.0.1; default the port this folder used last time if it
        is free, else a free one.
    controller_port : int, optional
        The KRaft controller port; default a free one.
    timeout : float
        Seconds to wait for the broker to answer a metadata request.
    detach : bool
        Leave the broker running when this Python process exits (the command line's
        ``start``).  When false it is stopped at exit, and on Linux also killed if this
        process dies without stopping it.
    heap_opts : str, optional
        JVM heap options; default ``$KAFKA_HEAP_OPTS`` or ``-Xms128m -Xmx512m``.
    sasl_ssl : SaslSsl, optional
        Also listen for SASL_SSL clients (SCRAM-SHA-512), with a certificate signed by the
        folder's own CA (``tls/``, made by :func:`make_certificates` when absent; needs the
        ``cryptography`` package).  The start waits until this user can log in there.

    Returns
    -------
    Broker
        The running broker (a context manager that stops it).

    Raises
    ------
    DevBrokerError
        Java or Maven missing, jars not resolvable, a port in use, a broker already running
        from ``data_dir``, or a broker that exits or does not answer in time (the message
        carries the end of its log).
    """
    java = find_java()
    classpath = resolve_classpath()
    remove_dir = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="kafka-dev-")) if data_dir is None else data_dir
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if Broker.attach(data_dir) is not None:
        raise DevBrokerError(f"a Kafka broker is already running from {data_dir}: stop it "
                             f"first (python deploy/kafka/kafka.py stop --dir {data_dir})")
    (data_dir / "logs").mkdir(exist_ok=True)
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(_log4j2_properties(data_dir / "logs"))
    env = dict(os.environ, CLASSPATH=classpath)
    jvm = [java, *shlex.split(heap_opts or os.environ.get("KAFKA_HEAP_OPTS")
                              or DEFAULT_HEAP_OPTS),
           *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}",
           f"-Dkafka.logs.dir={data_dir / 'logs'}"]
    tls = None
    if sasl_ssl is not None:
        tls = TlsFiles(data_dir / "tls" / "ca.pem", data_dir / "tls" / "broker.pem")
        if not (tls.ca.is_file() and tls.keystore.is_file()):
            tls = make_certificates(data_dir / "tls")
    previous = _previous_ports(data_dir)
    for attempt in range(3):
        chosen = _choose_port(port, previous.get("PLAINTEXT") if attempt == 0 else None)
        chosen_controller = _choose_port(controller_port, None, avoid=(chosen,))
        secure_port = None
        if sasl_ssl is not None:
            secure_port = _choose_port(sasl_ssl.port, previous.get("SASL_SSL")
                                       if attempt == 0 else None,
                                       avoid=(chosen, chosen_controller))
        try:
            broker = _launch(jvm, env, data_dir, chosen, chosen_controller, timeout,
                             detach=detach, remove_dir=remove_dir,
                             secure=None if sasl_ssl is None or tls is None or
                             secure_port is None else (sasl_ssl, tls, secure_port))
        except _PortTaken:
            # A free port chosen here was taken before the JVM bound it: choose again.
            if port is not None or (sasl_ssl is not None and sasl_ssl.port is not None) \
                    or attempt == 2:
                raise
            continue
        if not detach:
            atexit.register(broker.stop)
        return broker
    raise AssertionError("unreachable")  # pragma: no cover


class _PortTaken(DevBrokerError):
    """The broker exited because a listener's port was in use."""


def _launch(jvm: list[str], env: dict[str, str], data_dir: Path, port: int,
            controller_port: int, timeout: float, *, detach: bool, remove_dir: bool,
            secure: tuple[SaslSsl, TlsFiles, int] | None = None) -> Broker:
    properties = data_dir / "server.properties"
    properties.write_text(_server_properties(
        data_dir / "data", port, controller_port,
        None if secure is None else (secure[2], secure[1])))
    formatted_now = not (data_dir / "data" / "meta.properties").is_file()
    if formatted_now:
        _format_storage(jvm, env, properties, data_dir,
                        None if secure is None else secure[0])
    log_sizes = _log_sizes(data_dir)  # the log files are appended to: read only what follows
    stdout = open(data_dir / "logs" / "stdout.log", "ab")  # the child keeps its own copy
    try:
        process = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(properties)], cwd=data_dir, env=env,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detach else die_with_parent(os.getpid()))
    finally:
        stdout.close()
    broker = Broker(data_dir, port, controller_port, process.pid,
                    process=process, remove_dir=remove_dir,
                    sasl_ssl_port=None if secure is None else secure[2])
    (data_dir / _PID_FILE).write_text(f"{process.pid}\n")
    (data_dir / _STATE_FILE).write_text(json.dumps(
        {"pid": process.pid, "port": port, "controller_port": controller_port,
         "bootstrap_servers": broker.bootstrap_servers,
         "sasl_ssl_port": broker.sasl_ssl_port}) + "\n")
    try:
        deadline = time.monotonic() + timeout
        _wait_ready(broker, process, timeout, log_sizes)
        if secure is not None:
            if not formatted_now:  # a folder formatted earlier: its users may differ
                _upsert_scram(broker, secure[0], max(1.0, deadline - time.monotonic()))
            _wait_secure_ready(broker, secure[0], secure[1], process,
                               max(1.0, deadline - time.monotonic()), log_sizes)
    except BaseException:
        broker._remove_dir = False  # keep the logs the error points at
        broker.stop(timeout=10.0)
        raise
    return broker


def _format_storage(jvm: list[str], env: dict[str, str], properties: Path,
                    data_dir: Path, sasl_ssl: SaslSsl | None = None) -> None:
    # Kafka 4: `kafka-storage.sh format -t <cluster id> -c server.properties`; with the
    # static quorum of server.properties (controller.quorum.voters) neither --standalone
    # nor --initial-controllers is wanted.
    command = [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
               "-c", str(properties)]
    if sasl_ssl is not None:
        # SCRAM users in KRaft live in the cluster metadata; written at format time they
        # are there from the first start. Given salted (as the broker stores them), the
        # password itself never appears on a command line.
        command += ["--add-scram", _scram_credential(sasl_ssl)]
    done = subprocess.run(command, cwd=data_dir, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    (data_dir / "logs" / "format.log").write_text(done.stdout)
    if done.returncode != 0:
        hint = _java_hint(done.stdout)
        raise DevBrokerError(f"formatting the Kafka storage in {data_dir / 'data'} failed "
                             f"(exit {done.returncode}){hint}:\n{_tail(done.stdout, 30)}")


def _scram_credential(sasl_ssl: SaslSsl, iterations: int = _SCRAM_ITERATIONS) -> str:
    """``kafka-storage format --add-scram`` argument: the user's salted SCRAM-SHA-512 key.

    SCRAM's SaltedPassword is PBKDF2-HMAC-SHA-512 of the password (RFC 5802 ``Hi``).
    """
    if any(c in sasl_ssl.username for c in ',=[]"'):
        raise DevBrokerError(f"SCRAM user name {sasl_ssl.username!r}: use letters, digits, "
                             "'-', '_' or '.'")
    salt = os.urandom(32)
    salted = hashlib.pbkdf2_hmac("sha512", sasl_ssl.password.encode(), salt, iterations)
    return (f"SCRAM-SHA-512=[name={sasl_ssl.username},iterations={iterations},"
            f'salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"]')


def _upsert_scram(broker: Broker, sasl_ssl: SaslSsl, timeout: float) -> None:
    """Set the SCRAM user's password through the plaintext listener (a reused folder)."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, "logger": _LOG})
    upsert = UserScramCredentialUpsertion(
        sasl_ssl.username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512,
                                               _SCRAM_ITERATIONS),
        sasl_ssl.password.encode())
    try:
        for future in admin.alter_user_scram_credentials(
                [upsert], request_timeout=timeout).values():
            future.result()
    except Exception as exc:  # KafkaException; its text holds no password
        raise DevBrokerError(f"could not set the SCRAM credentials of "
                             f"{sasl_ssl.username!r}: {exc}") from None


def _wait_secure_ready(broker: Broker, sasl_ssl: SaslSsl, tls: TlsFiles,
                       process: subprocess.Popen[bytes], timeout: float,
                       log_sizes: dict[str, int]) -> None:
    """Wait until the SCRAM user gets metadata through the SASL_SSL listener."""
    admin = AdminClient({
        "bootstrap.servers": broker.sasl_ssl_bootstrap_servers,
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": sasl_ssl.username, "sasl.password": sasl_ssl.password,
        "ssl.ca.location": str(tls.ca),
        # Credentials written a moment ago may reach the broker's cache a little later:
        # retry soon rather than after librdkafka's backoff of up to 10 s.
        "reconnect.backoff.max.ms": 500, "logger": _LOG})
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if admin.list_topics(timeout=max(0.5, min(2.0, deadline - time.monotonic()))
                                 ).brokers:
                return
        except Exception as exc:  # KafkaException: handshake, login, timeout
            last_error = str(exc)
    raise DevBrokerError(
        f"the SASL_SSL listener {broker.sasl_ssl_bootstrap_servers} did not let "
        f"{sasl_ssl.username!r} in within {timeout:.0f} s ({last_error}); the broker log "
        f"({broker.log_file}) ends with:\n{_broker_log_tail(broker.data_dir, log_sizes)}")


def _wait_ready(broker: Broker, process: subprocess.Popen[bytes], timeout: float,
                log_sizes: dict[str, int]) -> None:
    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = _broker_log_tail(broker.data_dir, log_sizes)
            error = _PortTaken if "Address already in use" in log else DevBrokerError
            raise error(
                f"the Kafka broker exited with status {process.returncode} while starting"
                f"{_java_hint(log)}; its log ({broker.log_file}) ends with:\n{log}")
        if admin is None:
            if not _port_open(broker.port):  # cheap, and keeps librdkafka from complaining
                time.sleep(0.1)
                continue
            admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers,
                                 "logger": _LOG})
        wait = max(0.5, min(5.0, deadline - time.monotonic()))
        try:
            if not admin.list_topics(timeout=wait).brokers:
                last_error = "metadata lists no broker yet"
                time.sleep(0.2)
                continue
            # Asking about a group has the broker create __consumer_offsets and load its
            # coordinator now: otherwise the first consumer group of a test waits ~1-3 s
            # for COORDINATOR_NOT_AVAILABLE retries.
            group = "__devbroker_ready"
            admin.describe_consumer_groups([group], request_timeout=wait)[group].result()
            return
        except Exception as exc:  # KafkaException: transport, timeout, coordinator loading
            last_error = str(exc)
        time.sleep(0.2)
    raise DevBrokerError(
        f"the Kafka broker at {broker.bootstrap_servers} did not answer within {timeout:.0f} s "
        f"({last_error}); its log ({broker.log_file}) ends with:\n"
        f"{_broker_log_tail(broker.data_dir, log_sizes)}")


# ---------------------------------------------------------------------------- TLS


def make_certificates(folder: Path, hosts: tuple[str, ...] = (HOST, "localhost"),
                      days: int = 365) -> TlsFiles:
    """Make a certificate authority and a broker certificate it signs, as PEM files.

    For tests and development only: the CA's private key is thrown away once it has
    signed, so nothing else can be signed by it later.

    Parameters
    ----------
    folder : Path
        Where ``ca.pem`` and ``broker.pem`` are written (created if needed; the key file
        is readable by its owner only).
    hosts : tuple of str
        Names and IP addresses the certificate is valid for: clients check the address
        they connect to against them (librdkafka's ``ssl.endpoint.identification.algorithm``
        is ``https`` by default).
    days : int
        Validity from now [days].

    Returns
    -------
    TlsFiles
        The CA certificate and the broker's PEM key store.

    Raises
    ------
    DevBrokerError
        The ``cryptography`` package is not installed.
    """
    import datetime
    import ipaddress

    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise DevBrokerError("the broker's TLS certificates are made with the cryptography "
                             "package: pip install cryptography (it comes with the "
                             "project's dev extra)") from None
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    # EC P-256: made in a millisecond (an RSA key takes ~0.1 s), and Kafka's PEM key
    # store and librdkafka's OpenSSL both read it.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"stamp-worker dev CA {os.urandom(4).hex()}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder / "ca.pem", folder / "broker.pem")
    files.ca.write_bytes(ca.public_bytes(pem))
    keystore = (key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
                + cert.public_bytes(pem) + ca.public_bytes(pem))
    fd = os.open(files.keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(keystore)
    return files


# ---------------------------------------------------------------------------- config


def _server_properties(log_dir: Path, port: int, controller_port: int,
                       secure: tuple[int, TlsFiles] | None = None) -> str:
    listeners = f"PLAINTEXT://{HOST}:{port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    sasl_ssl = ""
    if secure is not None:
        secure_port, tls = secure
        listeners += f",SASL_SSL://{HOST}:{secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
        # The broker's key and certificate chain in one PEM file; no client certificates
        # (clients log in with SCRAM). Only the SASL_SSL listener uses them.
        sasl_ssl = f"""
# The SASL_SSL client listener: TLS, then a SCRAM-SHA-512 login (users: kafka-storage
# format --add-scram, or the admin API).
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={tls.keystore.as_posix()}
"""
    return f"""\
# Written by worker/tools/devbroker.py on each start: edits are lost.
# One node that is both broker and KRaft controller, static quorum of itself.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{controller_port}
controller.listener.names=CONTROLLER
listeners={listeners},CONTROLLER://{HOST}:{controller_port}
advertised.listeners={listeners}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
log.dirs={log_dir.as_posix()}
{sasl_ssl}
# A single node: every internal topic has one replica (the defaults want three).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

# Tests: groups form at once, topics exist only when created.
group.initial.rebalance.delay.ms=0
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2

# Broker-rewritten alert files reach 1.7 MB (many alerts per container), and dead
# letters carry the original bytes: accept messages up to 16 MiB, as alert streams do.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
"""


def _log4j2_properties(logs: Path) -> str:
    log = (logs / "server.log").as_posix()
    return f"""\
# Written by worker/tools/devbroker.py on each start: edits are lost.
status = warn
name = kafka-dev
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints (org.apache.kafka.common.Uuid): 16 random
    # bytes, URL-safe base64 without padding, never starting with '-'.
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# ---------------------------------------------------------------------------- helpers


def _choose_port(requested: int | None, previous: int | None, avoid: tuple[int, ...] = ()
                 ) -> int:
    if requested is not None:
        if not _port_free(requested):
            raise DevBrokerError(f"port {requested} on {HOST} is in use: stop what listens "
                                 "there (another broker? python deploy/kafka/kafka.py stop) "
                                 "or choose another port")
        return requested
    if previous is not None and previous not in avoid and _port_free(previous):
        return previous
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def _previous_ports(data_dir: Path) -> dict[str, int]:
    """The client ports the folder's broker advertised last time, by listener name."""
    properties = data_dir / "server.properties"
    if not properties.is_file():
        return {}
    ports: dict[str, int] = {}
    for line in properties.read_text().splitlines():
        if line.startswith("advertised.listeners="):
            for listener in line.partition("=")[2].split(","):
                name, _, address = listener.partition("://")
                with contextlib.suppress(ValueError):
                    ports[name.strip()] = int(address.rsplit(":", 1)[1])
    return ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _is_our_jvm(pid: int, data_dir: Path) -> bool:
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    return (b"kafka.Kafka" in cmdline
            and str(data_dir / "server.properties").encode() in cmdline)


_LOG_NAMES = ("stdout.log", "server.log")


def _log_sizes(data_dir: Path) -> dict[str, int]:
    sizes = {}
    for name in _LOG_NAMES:
        with contextlib.suppress(OSError):
            sizes[name] = (data_dir / "logs" / name).stat().st_size
    return sizes


def _read_log(path: Path, since: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) >= since:  # else it rolled over: read it all
                fh.seek(since)
            else:
                fh.seek(0)
            return fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _broker_log_tail(data_dir: Path, since: dict[str, int], lines: int = 25) -> str:
    """What this start wrote: the first errors of the broker's log, then its last lines."""
    parts = []
    stdout = _read_log(data_dir / "logs" / "stdout.log", since.get("stdout.log", 0))
    if any(line.strip() for line in stdout):
        parts.append("--- stdout.log (end)\n" + "\n".join(stdout[-15:]))
    server = _read_log(data_dir / "logs" / "server.log", since.get("server.log", 0))
    errors: list[str] = []
    for i, line in enumerate(server):
        if "] ERROR " in line or "] FATAL " in line:
            errors.extend(server[i:i + 3])  # the line, the exception and its message
            if len(errors) >= 15:
                break
    if errors:
        parts.append("--- server.log (first errors)\n" + "\n".join(errors))
    if server:
        parts.append("--- server.log (end)\n" + "\n".join(server[-lines:]))
    return "\n".join(parts) or "(no log written)"


def _java_hint(text: str) -> str:
    if "UnsupportedClassVersionError" in text:
        return " (Kafka 4 needs Java 17 or newer: install it or point JAVA_HOME at it)"
    if "ClassNotFoundException" in text or "NoClassDefFoundError" in text:
        return (f" (a jar is missing from the classpath: delete {CACHE_DIR}/classpath-*.txt "
                "to resolve it again)")
    return ""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------- CLI


def wipe(data_dir: Path) -> None:
    """Delete a stopped broker's folder (its topics, data and logs).

    Parameters
    ----------
    data_dir : Path
        A folder made by :func:`start` (it holds ``server.properties``).

    Raises
    ------
    DevBrokerError
        A broker still runs from it, or it is not a broker folder (nothing is deleted).
    """
    if not data_dir.exists():
        return
    if Broker.attach(data_dir) is not None:
        raise DevBrokerError(f"a broker still runs from {data_dir}: stop it first")
    if not (data_dir / "server.properties").is_file():
        raise DevBrokerError(f"{data_dir} holds no server.properties: not a broker folder, "
                             "left as it is")
    shutil.rmtree(data_dir)


CLIENT_ENV = "client.env"
DEV_SCRAM_USER = "stamp"


def _dev_sasl_ssl(data_dir: Path, port: int | None) -> SaslSsl:
    """The folder's SCRAM user: its password from ``tls/client.env``, else a new one."""
    env = data_dir / "tls" / CLIENT_ENV
    password = None
    with contextlib.suppress(OSError):
        for line in env.read_text().splitlines():
            if line.startswith("STAMP_WORKER__KAFKA__COMMON__SASL_PASSWORD="):
                password = line.partition("=")[2]
    if not password:
        import secrets

        password = secrets.token_urlsafe(18)
    return SaslSsl(DEV_SCRAM_USER, password, port)


def write_client_env(broker: Broker, sasl_ssl: SaslSsl) -> Path:
    """Write ``tls/client.env``: the settings of a client of the SASL_SSL listener.

    The lines are those the worker, ``replay`` and ``labels`` read
    (``KAFKA_BOOTSTRAP_SERVERS``, ``STAMP_WORKER__KAFKA__COMMON__*``); the file is
    readable by its owner only.  ``set -a; . FILE; set +a`` exports them.

    Returns
    -------
    Path
        The file.
    """
    path = broker.data_dir / "tls" / CLIENT_ENV
    lines = [f"KAFKA_BOOTSTRAP_SERVERS={broker.sasl_ssl_bootstrap_servers}",
             "STAMP_WORKER__KAFKA__COMMON__SECURITY_PROTOCOL=SASL_SSL",
             "STAMP_WORKER__KAFKA__COMMON__SASL_MECHANISM=SCRAM-SHA-512",
             f"STAMP_WORKER__KAFKA__COMMON__SASL_USERNAME={sasl_ssl.username}",
             f"STAMP_WORKER__KAFKA__COMMON__SASL_PASSWORD={sasl_ssl.password}",
             f"STAMP_WORKER__KAFKA__COMMON__SSL_CA_LOCATION={broker.ca_file}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the ``start`` / ``stop`` / ``status`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 1 on failure, or from ``status`` when no broker runs.
    """
    parser = argparse.ArgumentParser(
        prog="kafka.py", description="Single-node Kafka 4 (KRaft) broker for development.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start detached; print KAFKA_BOOTSTRAP_SERVERS")
    p_start.add_argument("--port", type=int, help="client port (default: free one)")
    p_start.add_argument("--timeout", type=float, default=60.0,
                         help="seconds to wait for the broker (default 60)")
    p_start.add_argument("--sasl-ssl", action="store_true",
                         help="also a SASL_SSL listener (TLS + SCRAM-SHA-512 logins); its "
                         "client settings go to DIR/tls/client.env")
    p_start.add_argument("--sasl-ssl-port", type=int, metavar="N",
                         help="port of the SASL_SSL listener (default: a free one)")
    p_stop = sub.add_parser("stop", help="stop the broker of --dir")
    p_stop.add_argument("--wipe", action="store_true",
                        help="also delete the broker folder: every topic, its data and "
                             "logs (the broker keeps them across stops otherwise)")
    for p in (p_start, p_stop,
              sub.add_parser("status", help="is a broker running from --dir?")):
        p.add_argument("--dir", type=Path, default=DEFAULT_RUN_DIR,
                       help=f"broker folder (default {DEFAULT_RUN_DIR})")
    args = parser.parse_args(argv)
    data_dir = args.dir.resolve()
    running = Broker.attach(data_dir)
    try:
        if args.command == "start":
            if args.sasl_ssl_port is not None and not args.sasl_ssl:
                raise DevBrokerError("--sasl-ssl-port goes with --sasl-ssl")
            if running is not None:
                if args.port not in (None, running.port):
                    raise DevBrokerError(f"a broker already runs from {data_dir} on port "
                                         f"{running.port}: stop it first to change the port")
                if args.sasl_ssl and running.sasl_ssl_port is None:
                    raise DevBrokerError(f"a broker already runs from {data_dir} without a "
                                         "SASL_SSL listener: stop it first to add one")
                print(f"already running (pid {running.pid})", file=sys.stderr)
            else:
                t0 = time.monotonic()
                sasl_ssl = (_dev_sasl_ssl(data_dir, args.sasl_ssl_port) if args.sasl_ssl
                            else None)
                running = start(data_dir, args.port, timeout=args.timeout, detach=True,
                                sasl_ssl=sasl_ssl)
                if sasl_ssl is not None:
                    write_client_env(running, sasl_ssl)
                print(f"Kafka broker started in {time.monotonic() - t0:.1f} s "
                      f"(pid {running.pid}, log {running.log_file})", file=sys.stderr)
            print(f"KAFKA_BOOTSTRAP_SERVERS={running.bootstrap_servers}")
            if running.sasl_ssl_port is not None:
                print(f"SASL_SSL listener {running.sasl_ssl_bootstrap_servers} (user "
                      f"{DEV_SCRAM_USER}, CA {running.ca_file}): its client settings are "
                      f"in {running.data_dir / 'tls' / CLIENT_ENV}", file=sys.stderr)
        elif args.command == "stop":
            if running is None:
                print(f"no Kafka broker running from {data_dir}", file=sys.stderr)
            else:
                running.stop()
                print(f"stopped Kafka broker pid {running.pid}", file=sys.stderr)
            if args.wipe:
                wipe(data_dir)
                print(f"deleted {data_dir}", file=sys.stderr)
        else:
            if running is None:
                print(f"not running ({data_dir})")
                return 1
            print(f"running pid {running.pid} "
                  f"KAFKA_BOOTSTRAP_SERVERS={running.bootstrap_servers}"
                  + (f" SASL_SSL={running.sasl_ssl_bootstrap_servers}"
                     if running.sasl_ssl_port is not None else ""))
    except DevBrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
