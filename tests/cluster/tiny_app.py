"""A one-deployment app for tests of `make serve`'s process handling (fast to deploy)."""

from __future__ import annotations

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Hello:
    def __call__(self, _request: object) -> str:
        return "hello"


app = Hello.bind()
