"""Identity v3 (a Keystone subset) and the service catalog.

- ``config.py``: the operator's identity file — projects, users (password hashes), role
  assignments, application credentials; generated on first start.
- ``passwords.py``: password and secret hashes (scrypt from the standard library).
- ``model.py`` / ``tokens.py``: issued tokens, kept hashed in the database (they survive a
  restart and work on every API process), with expiry and revocation.
- ``catalog.py``: the service catalog, from the endpoint catalog in the settings.
- ``api.py``: ``/identity``: version documents, ``/v3/auth/tokens``, projects, catalog.
- ``keystone.py``: for deployments with their own Keystone, token validation against it.
"""
