"""One module per case; each has run(lab) -> Section."""
