"""Security: oversize input, policy-event bursts, secret leaks."""
