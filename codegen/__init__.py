"""codegen layer (see DESIGN.md §2)."""
