"""Helpers shared by the tests and the benchmarks (no tests here; pytest does not collect this package).

- :mod:`tests.support.tiny_model`: a tiny, seeded, random-weight SD 1.x model in the exact checkpoint layout.
- :mod:`tests.support.api`: serve a FastAPI app on a loopback port; base64 PNG helpers.
- :mod:`tests.support.fakes`: a stand-in service implementing :class:`webui.service.Service`.
- :mod:`tests.support.hub_server`: a local stand-in for the Hugging Face hub (downloads without internet).
"""
