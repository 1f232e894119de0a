"""One router per resource: stores, tokens (campaigns, visits, webhooks to come)."""
