"""A local WeChat Official Account API server for tests, the demo and benchmarks: the real
`/cgi-bin/…` paths, JSON shapes and errcodes, plus an admin API under `/_sim/`.

Run it with `wxpush simulator` or `python -m wechat.simulator`; drive it from Python with
`start_simulator()` and `SimulatorAdmin`. See docs/simulator.md.
"""

from wechat.simulator.admin import SimulatorAdmin
from wechat.simulator.process import SimulatorProcess, start_simulator

__all__ = ["SimulatorAdmin", "SimulatorProcess", "start_simulator"]
