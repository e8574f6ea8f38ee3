"""``batch.decode_processes`` helpers on a real broker: they die with a killed worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.integration.test_pipeline import committed, produce, write_config
from tests.stream.test_decodepool import (
    kill_survivors,
    needs_proc,
    process_children,
    wait_until_gone,
)
from worker.decode.packets import synthetic_alert


@needs_proc
def test_sigkill_of_the_worker_leaves_no_helper_and_no_resource_tracker(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path) -> None:
    """A supervisor restarting a worker killed with SIGKILL must not pile up its
    helpers (~75 MB each) and the multiprocessing resource tracker: all gone in 5 s."""
    topics = {"input": topic_factory("alerts", partitions=3),
              "output": topic_factory("labels"), "dlq": topic_factory("dead")}
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], [synthetic_alert(seed) for seed in range(600)])
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          decode_processes=2)
    log = tmp_path / "worker.log"
    with log.open("w") as out:  # a file, not a pipe: nothing blocks on unread output
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("stamp-worker")), "run", "--config",
             str(config)], stdout=out, stderr=subprocess.STDOUT)
    children: dict[int, tuple[int, str]] = {}
    try:
        # Kill it mid-run, once the helpers have decoded batches that were committed.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.poll() is None:
            if sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)):
                break
            time.sleep(0.2)
        assert worker.poll() is None, log.read_text()
        children = process_children(worker.pid)
        helpers = [pid for pid, (_, cmd) in children.items() if "spawn_main" in cmd]
        trackers = [pid for pid, (_, cmd) in children.items() if "resource_tracker" in cmd]
        assert len(helpers) == 2 and len(trackers) == 1, children
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(30) == -signal.SIGKILL
        survivors = wait_until_gone(children, 5.0)
        assert not survivors, {pid: children[pid][1] for pid in survivors}
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        kill_survivors(children)
