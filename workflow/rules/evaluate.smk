# evaluate stage rules (see docs/contracts.md). Filled by the evaluate work.
