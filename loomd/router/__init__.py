"""The router: local llama.cpp inference and a policy router with measured facts.

Only light modules are imported here; llama_cpp is imported on the engine's worker.
"""

from loomd.router.policy import Decision, Facts, Resolved, Route, decide, resolve

__all__ = ["Decision", "Facts", "Resolved", "Route", "decide", "resolve"]
