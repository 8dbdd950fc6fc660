"""Seconds per phase of a run (load, prepare, fit, selection, evaluation, figures), wall clock and CPU, for
metrics.json's "timings": where a run's time goes."""

import contextlib
import time


class Phases:
    """Seconds per phase of a run, wall clock and CPU (user + system, all threads of this process), for
    metrics.json's "timings": `with phases("fit"): ...`; a phase entered twice adds up."""

    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            t = self.seconds.setdefault(name, {"wall": 0.0, "cpu": 0.0})
            t["wall"] += time.perf_counter() - wall
            t["cpu"] += time.process_time() - cpu

    def only(self, *names: str) -> "Phases":
        """A new Phases holding these phases' seconds so far."""
        new = Phases()
        new.seconds = {name: dict(t) for name, t in self.seconds.items() if name in names}
        return new

    def table(self) -> dict[str, dict[str, float]]:
        return {name: {k: round(v, 2) for k, v in t.items()} for name, t in self.seconds.items()}
