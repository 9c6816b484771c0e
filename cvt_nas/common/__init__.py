"""Small helpers every stage uses: reading YAML files and writing files atomically.
Nothing here knows about models, training or search.
"""
