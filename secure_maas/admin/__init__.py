"""Admin services: what a command line or an HTTP admin API does, once, without printing.

- `changes`: an admin change and its audit event, committed together or not at all.
- `explain`: who may do what on which model, with every rule that matched or was skipped.

The CLI parses options and prints what these return; nothing here knows of click or Flask.
"""
