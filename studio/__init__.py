"""TN Studio's browser app (Panel): a thin projection of the engine's Design, cost and program objects."""
