"""The worker process: `python -m worker` or `parcours worker`."""
