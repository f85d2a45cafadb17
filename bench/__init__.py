"""meshline's benchmarks (`make bench`). Each starts its own Ray instance, with the Serve
process settings every meshline cluster runs with (deployments/configs.py SERVE_PROCESS_ENV):
set here, before any benchmark starts Ray, so every figure is the shipped configuration's."""

import os

from deployments.configs import SERVE_PROCESS_ENV

os.environ.update(SERVE_PROCESS_ENV)
