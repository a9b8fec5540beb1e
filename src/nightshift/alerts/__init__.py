"""Alerts: tell someone, by webhook or e-mail, when a run fails for good or runs too long.

`rules` holds the use cases behind the API, `detect` the pure decisions (which rule fires for
which run, what the alert says), `deliver` the senders, and `dispatcher` the steppable loop that
scans the database, records deliveries once, and sends them with retries.
"""
