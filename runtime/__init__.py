"""edgelm.runtime: what a device app embeds. Needs numpy + onnxruntime only (never torch at import).

    from edgelm.runtime import Session, Sampling
    with Session.open("bundle/") as sess:
        s = sess.stream(Sampling(temperature=0.8, top_k=40, seed=1), prompt="Hello")
        for b in s.generate(200, stop=[b"\\n\\n"]): ...
"""

from .bundle import Bundle, StateTensor, load_bundle
from .decode import Utf8Decoder
from .sampling import GREEDY, BatchSampler, Sampler, Sampling, StopMatcher
from .scheduler import Scheduler
from .session import Session
from .stream import Stream

__all__ = ["BatchSampler", "Bundle", "GREEDY", "Sampler", "Sampling", "Scheduler", "Session", "StateTensor",
           "StopMatcher", "Stream", "Utf8Decoder", "load_bundle"]
