"""Models: the ResNet spec and its layer plan, the builder, the registry, complexity counts, the budget search, releases."""
