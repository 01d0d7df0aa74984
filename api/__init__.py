"""The signed HTTP push API: one transactional message now, through the campaign engine.

`api.signing` is the request-signing scheme (stdlib only, shared with clients and tests);
the service, its store and its dispatch live beside it (docs/api.md).
"""
