"""loomd benchmarks: a harness, workloads, transports, services, cases and a report,
shared by every bench entry point (bench/bus.py, and the subsystem benches)."""
