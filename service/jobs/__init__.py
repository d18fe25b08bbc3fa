"""Async embedding jobs: durable state in `store` (jobs, chunks, results, webhooks, events, deliveries) and signed
webhook delivery in `webhooks`. Import from the modules: the package re-exports nothing, so each stays light."""
