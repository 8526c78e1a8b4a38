"""Billing: metering one execution (only `generate_s` is billed), the once-written ledger, budgets, usage roll-ups.

May import handlers.accounts, the contract and loaders. Never imports generation: `metering.metered` is handed the
run function, so the recipe calls billing and not the other way round.
"""
