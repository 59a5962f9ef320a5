"""The benchmark harness: systems under test, a /proc observer, workloads and the report."""
