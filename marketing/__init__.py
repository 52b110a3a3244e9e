"""What marketers read: segments, members, profiles, ad-hoc SQL and the per-publish report,
all from the published snapshot, opened read-only."""
