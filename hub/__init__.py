"""Files pmmrec publishes with its artefacts (model-card template, catalogue); shipped as `pmmrec.hub_assets`."""
