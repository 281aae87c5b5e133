"""The artifact store: run folders, manifests, atomic writes, staging, checkpoints."""
