"""The HINT Gradio app: explore an image's concepts, boxes and neurons through the TorchServe endpoint.

``python -m app --help``; the app never loads the model, it calls ``POST /predictions/hint``
(:mod:`app.client`) and draws the answer (:mod:`app.drawing`, :mod:`app.ui`).
"""

from .client import HintClient, HintError, ServiceError, ServiceUnreachable

__all__ = ["HintClient", "HintError", "ServiceError", "ServiceUnreachable"]
