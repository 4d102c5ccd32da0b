"""Generators run by developers (``make generate``), not shipped in the wheel.

``tools.crd`` writes the CRD from the spec and status models, ``tools.docs`` its reference page.
"""
