"""Development helpers: a local dev issuer (JWKS, discovery, minting, rotation) and an echo app.

They serve the demo, the tests and the load tests. They are not for production: the issuer mints any token
it is asked for.
"""
