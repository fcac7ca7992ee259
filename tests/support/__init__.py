"""What the tests and the benchmarks both use, in one place neither imports the other through: real services
(:mod:`tests.support.services`), the small sweep file (:mod:`tests.support.sweeps`) and test-only fault injection
(:mod:`tests.support.faults`). Importable from the repository root, so ``python -m benchmarks.X`` finds it."""
