"""edgelm.runtime: what a device app embeds. Needs numpy + onnxruntime only (never torch at import).

    from edgelm.runtime import Session, Sampling
    with Session.open("bundle/") as sess:       # verifies every byte; trusted_keys=[...] for signed
        s = sess.stream(Sampling(temperature=0.8, top_k=40, seed=1), prompt="Hello")
        for b in s.generate(200, stop=[b"\\n\\n"]): ...

The bundle format has one owner, `manifest.py`; what a bundle must prove before anything in it
runs is `bundle.py`; Ed25519 signatures are `signing.py` (needs the `cryptography` extra).
"""

from .bundle import Bundle, load_bundle, sign_bundle
from .manifest import Manifest, StateTensor
from .decode import Utf8Decoder
from .sampling import GREEDY, BatchSampler, Sampler, Sampling, StopMatcher
from .scheduler import Scheduler
from .session import Session
from .stream import Stream

__all__ = ["BatchSampler", "Bundle", "GREEDY", "Manifest", "Sampler", "Sampling", "Scheduler", "Session",
           "StateTensor", "StopMatcher", "Stream", "Utf8Decoder", "load_bundle", "sign_bundle"]
