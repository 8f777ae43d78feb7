# archive stage rules (see docs/contracts.md). Filled by the archive work.
