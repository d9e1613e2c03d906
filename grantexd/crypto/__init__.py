"""Identifiers, signing keys, JWTs and the hashing of bearer secrets."""
