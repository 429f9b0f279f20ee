"""Command-line analyses (``python -m domainbed_surgery.scripts.<name>``)."""
