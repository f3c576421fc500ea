"""The byte vocabulary every edgelm model, graph and runtime shares (standard library only).

VOCAB       256: a model reads and predicts raw byte values; there is no tokenizer.
PRIME_BYTE  0x0A ("\\n"): every stream's history starts with this one byte. A fresh stream holds
            the state (and next-byte logits) after stepping PRIME_BYTE from the zero state, and
            `edgelm eval` predicts a text's first byte the same way. (Models have no start-of-text
            byte; texts usually follow a line break.)
"""

VOCAB = 256
PRIME_BYTE = 0x0A
