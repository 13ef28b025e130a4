"""The volume service: a Cinder v3 subset at /volume/v3 (seeds 002 and 003)."""
