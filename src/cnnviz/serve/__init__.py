"""The explorer (``cnnviz serve``, :func:`cnnviz.explore`): a local web app on Starlette and
uvicorn that asks a model the next question at once — another class, method, layer or channel.

Stages: :mod:`~cnnviz.serve.session` (model, images, cache), :mod:`~cnnviz.serve.explain_views`
and :mod:`~cnnviz.serve.unit_views` (what each endpoint computes), :mod:`~cnnviz.serve.app`
(routes), :mod:`~cnnviz.serve.security` (token, headers), :mod:`~cnnviz.serve.uploads`,
:mod:`~cnnviz.serve.server` (uvicorn). The JSON API is described in docs/explorer-api.md.
"""
