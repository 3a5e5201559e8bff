"""Start-up time and idle RSS of the proxy for run.sh.

Usage: startup.py BINARY STARTS
Starts BINARY (its settings come from the environment; PORT is set here to a free port) STARTS
times, one after the other. Each time: from just before spawning to the first `200` from
`GET /health` (polled without pause), then VmRSS once the process has settled. Prints one line
`STARTUP_MS IDLE_RSS_KB` per start; exits non-zero if a start fails or takes over 10 s.
"""

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 10
SETTLE_S = 0.3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def health_ok(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def one_start(binary):
    port = free_port()
    env = dict(os.environ, PORT=str(port))
    start = time.perf_counter()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not health_ok(port):
            if proc.poll() is not None:
                log.seek(0)
                sys.exit(f"proxy exited with {proc.returncode}: {log.read().decode()}")
            if time.perf_counter() - start > DEADLINE_S:
                sys.exit(f"proxy did not answer /health on port {port} within {DEADLINE_S} s")
        ready_ms = (time.perf_counter() - start) * 1000
        time.sleep(SETTLE_S)
        return ready_ms, vm_rss_kb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main():
    binary, starts = sys.argv[1], int(sys.argv[2])
    for _ in range(starts):
        ready_ms, rss_kb = one_start(binary)
        print(f"{ready_ms:.3f} {rss_kb}", flush=True)


if __name__ == "__main__":
    main()
