"""The .idx grammar, shipped as package data."""
