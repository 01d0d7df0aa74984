"""Child processes: start one, wait until it answers, stop it and its whole group.

The one way the CLI's services, the simulator, the benchmarks and the tests run a server in
the background. It imports nothing of this repository, so every layer may use it
(tests/test_layers.py).
"""

from processes.child import Child, ChildFailed, http_ok, running, start, start_ready
from processes.ports import free_port, pick_port, port_is_free

__all__ = [
    "Child",
    "ChildFailed",
    "free_port",
    "http_ok",
    "pick_port",
    "port_is_free",
    "running",
    "start",
    "start_ready",
]
