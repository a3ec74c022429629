"""Alembic scripts for the context-trimmer history store.

They live at the top of the repository and ship in the wheel as
``context_trimmer.migrations``; ``context_trimmer._store.migrate`` runs them with their own
version table (``context_trimmer_alembic_version``), so a host application's Alembic
history is never touched.
"""
