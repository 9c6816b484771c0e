"""Small helpers every stage uses: reading YAML files, writing files atomically, building
config dataclasses from plain mappings.
Nothing here knows about models, training or search.
"""
