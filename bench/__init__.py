"""meshline's benchmarks (`make bench`). Each starts its own Ray instance, with the Serve
process settings every meshline cluster runs with (deployments/configs.py SERVE_PROCESS_ENV):
set here, before any benchmark starts Ray, so every figure is the shipped configuration's.
HAProxy's ports are free ones: the previous benchmark's HAProxy may still be draining."""

import os
import socket

from deployments.configs import serve_process_env


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:  # all open at once: distinct ports
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


os.environ.update(serve_process_env(*_free_ports(2)))
