"""Reliability harnesses: fuzzing (fuzz), demo load (load), the clinic-input checks on real
and non-scan images (input_checks) and the out-of-distribution flag (ood)."""
