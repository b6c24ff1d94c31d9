"""Property-based fuzzing of every input boundary (bad input)."""
