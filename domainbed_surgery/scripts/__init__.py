"""Command-line entry points of domainbed_surgery."""
