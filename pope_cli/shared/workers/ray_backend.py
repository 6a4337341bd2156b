"""Workers as Ray actors: the same worker, scheduled by Ray on any node of a cluster.

Ray is the `ray` extra and is imported only here. `connect` joins a cluster (`auto`,
`HOST:PORT`) or starts one on this machine (`local`): that one advertises 127.0.0.1 only (Ray
picks the loopback address when its multi-node mode is off) and keeps Ray's token authentication
on (a token in ~/.ray/auth_token, made on first use). Each actor asks Ray for `num_gpus` = the
tensor-parallel size, so Ray pins its devices; a CPU actor takes one CPU and one torch thread.
"""

from __future__ import annotations

import os

from pope_cli.shared.errors import PopeError
from pope_cli.shared.workers.local import Event
from pope_cli.shared.workers.worker import EngineSpec, RayWorker


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PopeError("--ray: Ray is not installed; pip install 'pope-cli[ray]'", exit_code=2) from None
    return ray


def connect(address: str, num_cpus: int | None = None):
    """The `ray` module, initialised on the cluster named by `--ray`."""
    if address == "local":
        # Both are read when Ray starts (the first at import): keep the node on the loopback
        # address and token authentication on, whatever the environment says.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "token"
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise PopeError(f"--ray {address}: cannot connect to Ray ({error})", exit_code=2) from None
    if address == "local" and ray.util.get_node_ip_address() != "127.0.0.1":
        # Ray was imported before the variable was set, so it took the network address.
        ray.shutdown()
        raise PopeError("--ray local: Ray would listen on the network address, not 127.0.0.1; "
                        "start it yourself and pass --ray HOST:PORT", exit_code=2)
    return ray


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


class RayBackend:
    def __init__(self, ray, spec: EngineSpec, num_gpus: int):
        self.ray = ray
        self.spec = spec
        self.num_gpus = num_gpus
        self.actor_class = ray.remote(RayWorker)
        self.actors: dict = {}
        self.in_flight: dict = {}

    def describe(self, slot: int) -> str:
        return f"Ray worker {slot}"

    def start(self, slot: int) -> None:
        old = self.actors.get(slot)
        if old is not None:
            self.ray.kill(old)
        self.actors[slot] = self.actor_class.options(num_gpus=self.num_gpus, num_cpus=1, max_restarts=0).remote(
            self.spec, 1)

    def submit(self, slot: int, batch_id: int, requests, sampling) -> None:
        self.in_flight[self.actors[slot].generate.remote(batch_id, requests, sampling)] = (slot, batch_id)

    def wait(self) -> list[Event]:
        ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
        events = []
        for ref in ready:
            slot, batch_id = self.in_flight.pop(ref)
            try:
                _, results, seconds = self.ray.get(ref)
            except self.ray.exceptions.RayError as error:
                events.append(Event(slot, batch_id, error=_first_line(error)))
                self._forget(slot)
                continue
            events.append(Event(slot, batch_id, results, seconds))
        return events

    def _forget(self, slot: int) -> None:
        """The slot's other calls die with its actor; drop them (the pool requeues their batches)."""
        for ref, (other, _) in list(self.in_flight.items()):
            if other == slot:
                del self.in_flight[ref]

    def close(self, kill: bool = False) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors, self.in_flight = {}, {}


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
