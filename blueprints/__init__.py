"""The web app's blueprints; each module exports `bp`."""
