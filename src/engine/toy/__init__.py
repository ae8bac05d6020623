"""Offline toy models and data: a tiny Llama that really learns two-digit addition on CPU."""
