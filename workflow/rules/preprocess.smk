# preprocess stage rules (see docs/contracts.md). Filled by the preprocess work.
