"""Side-by-side benchmarks of our hot paths against the PyTorch references, one process each; ``python
benchmarks/<name>.py`` runs one. Ratios within one run are what they report (absolute times vary between machines)."""
