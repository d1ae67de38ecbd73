"""Research studies, each one command with its results: transfer to a new site (transfer),
site profiles on a site's own images (site_profiles), which layers the OOD score uses
(ood_layers)."""
