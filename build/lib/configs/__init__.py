"""Protocol configs (YAML), shipped as package data: ``importlib.resources.files("configs")``."""
