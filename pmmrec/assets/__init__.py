"""Templates and the catalogue pmmrec publishes with its artefacts (package data)."""
