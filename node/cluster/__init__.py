"""Placement: the consistent-hash ring and the cluster map built on it."""
