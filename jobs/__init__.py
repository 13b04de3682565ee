"""Cron-style jobs (bin/*): each runs once, calls one SQL function, prints a summary."""
