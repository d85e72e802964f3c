"""Fidelity checks of the emulated link: probes run inside the namespaces
(`probe`), their statistics (`probe_stats`) and the judged table (`linkcheck`)."""
