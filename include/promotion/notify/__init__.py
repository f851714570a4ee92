"""Telling people: alerts to on-call and reviewers (``alerts``) and signed deploy events (``deploy_events``)."""
