"""Dice / HD95 evaluation with reports."""
