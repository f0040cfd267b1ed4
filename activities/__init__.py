"""Every side effect: the profile store, rendering, the delivery ledger and channels."""
