"""frontend layer (see DESIGN.md §2)."""
