"""Workers: claim runs under a lease, execute them by kind, record outcomes."""
