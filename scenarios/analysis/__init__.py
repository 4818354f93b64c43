"""Turns a stored run into figures: metrics, report, comparisons, targets, packet views, checks."""
