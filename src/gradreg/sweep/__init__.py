"""Sweeps: spec -> runs -> store -> report. The store, executors, reports, figures, stats."""
