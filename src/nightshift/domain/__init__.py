"""Domain: models, statuses and the pure policies that decide what happens next."""
