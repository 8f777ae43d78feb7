# train stage rules (see docs/contracts.md). Filled by the train work.
