"""Kill a training process with SIGKILL once it has written a checkpoint at or past a step."""

import os
import signal
import time


def kill_after_checkpoint(proc, ckpt_dir, step: int, timeout: float = 120.0) -> int:
    """Wait until ``ckpt_dir`` holds a checkpoint of step ``>= step``, SIGKILL ``proc`` (which
    must still be running then) and return the latest checkpoint's step."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
        if any(int(d) >= step for d in found):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
