"""Flower ServerApp: strategies, and the observation layer around them."""
