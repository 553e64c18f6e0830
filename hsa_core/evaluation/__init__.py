"""Evaluation of trained models on synthetic tasks far beyond the training length."""
