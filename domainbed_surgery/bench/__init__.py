"""Benchmarks: step time and memory of the surgery algorithms (:mod:`.step_time`)."""
