"""Runs a scenario in the emulated network: the agents, the handover methods, the baselines."""
