"""Protocol logic with no HTTP in it; each module takes a ``Services`` context."""
