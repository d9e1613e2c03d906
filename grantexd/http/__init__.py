"""The HTTP API: the Quart-Trio application and one blueprint per resource group."""
