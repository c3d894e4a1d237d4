"""alignment stage."""
