"""Sessions: session model, wire dialects (sans-I/O), registry backends, version log."""
