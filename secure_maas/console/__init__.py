"""The web console for auditors and admins, served under `/console/` by `secure-maas serve`.

Server-rendered (a Flask blueprint in `views`, Jinja templates, one stylesheet, charts as SVG
drawn on the server by `charts`), over the same token verification, rules, audit log and
service functions as the API and the CLI. The library parts (`sessions`, `csrf`, `pages`,
`headers`) know nothing of Flask; only `views` imports it. This `__init__` imports nothing, so
`secure_maas.db.schema` can import `console.models` without Flask.
"""
