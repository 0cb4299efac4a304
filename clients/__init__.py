"""Flower ClientApp: local training on one simulated hospital's data, and update packaging."""
