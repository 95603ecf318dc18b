"""Job webhooks: checked at submit, written to an outbox with the job's end, signed and delivered with retries.

Key contracts:
- A job's webhooks (`job_webhooks`) are checked by `validation.check_webhooks`, whatever the dialect.
- Delivery rows (`webhook_deliveries`) are written in the same transaction as the job's terminal state
  (`outbox.deliveries_op`), so a crash between finishing and delivering loses nothing.
- `dispatcher.Dispatcher` claims due rows with a lease, delivers them through the guarded client, logs every
  attempt in `webhook_attempts` and reschedules failures; the delivery id is the `webhook-id` of every attempt.
- What a dialect sends and how it signs is a `dialects.WebhookDialects` entry, built in the composition root.
"""
