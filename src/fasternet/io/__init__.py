"""Reading and writing: checkpoints in every layout (:mod:`.checkpoints`), downloads into the cache
(:mod:`.hub`), image files and folders (:mod:`.images`).

Builds no models (that is :mod:`fasternet.builder`); imports only :mod:`fasternet.models` below it.
"""
