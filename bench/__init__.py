"""meshline's benchmarks (`make bench`). Each starts its own Ray instance, with the Serve
process settings every meshline cluster runs with (deployments/configs.py SERVE_PROCESS_ENV):
set here, before any benchmark starts Ray, so every figure is the shipped configuration's.
HAProxy's ports are free ones: the previous benchmark's HAProxy may still be draining."""

import os

from deployments.configs import serve_process_env
from tests.helpers import free_ports

os.environ.update(serve_process_env(*free_ports(2)))
