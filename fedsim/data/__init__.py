"""Cohorts, dataset plug-ins and partitioners."""
