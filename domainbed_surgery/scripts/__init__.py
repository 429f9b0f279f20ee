"""Command-line tools of domainbed-surgery (``python -m domainbed_surgery.scripts.<name>``)."""
