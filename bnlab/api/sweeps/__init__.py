"""Sweeps on the API's side: what it returns (schemas), how a sweep is stored and queued
(submit), its report (report) and its plots (plots). The grid itself is `bnlab.sweeps`."""
