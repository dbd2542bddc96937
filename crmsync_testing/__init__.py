"""What the tests and the benchmarks share: test servers, stores, processes, harnesses."""
