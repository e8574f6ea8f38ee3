"""worker.tools.devbroker without a broker: when a start needs Maven."""

from __future__ import annotations

import hashlib
from pathlib import Path

from worker.tools.devbroker import classpath_cached


def test_classpath_cached_only_when_every_listed_jar_is_there(tmp_path: Path) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text("<project/>")
    cache = tmp_path / "cache"
    assert not classpath_cached(pom, cache)  # never resolved: the demo says Maven runs
    jar = tmp_path / "kafka.jar"
    jar.write_bytes(b"")
    cache.mkdir()
    key = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    (cache / f"classpath-{key}.txt").write_text(str(jar))
    assert classpath_cached(pom, cache)
    jar.unlink()  # ~/.m2 emptied: Maven resolves again
    assert not classpath_cached(pom, cache)
    assert not classpath_cached(tmp_path / "missing.xml", cache)
