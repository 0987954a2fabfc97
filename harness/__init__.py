"""What the tests and the benchmark share: real servers and their process trees, bounded load,
/metrics parsing, a real Prometheus, the penguins-like data and models users bring, hostile input.
Imports neither tests/ nor bench/."""
