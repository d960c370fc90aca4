"""The job domain: job records and their store, storage, keys, quotas, metering, webhooks,
retention, and the typed values that cross Ray handles. No Ray, no HTTP framework."""
