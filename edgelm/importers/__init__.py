"""Readers for the model formats edgelm imports. Each returns tensors or an edgelm payload and never
runs code from a file; edgelm/checkpoint.py (`load_checkpoint`) picks the reader for a path:

  a directory      transformers MambaForCausalLM or mamba_ssm MambaLMHeadModel (mamba_dirs.py)
  *.safetensors    an edgelm checkpoint or a plain state dict, without pickle (safetensors_file.py)
  any other file   torch.load(weights_only=True) (torchfile.py)
  a state dict     a classic char-RNN: Embedding + nn.LSTM/nn.GRU + Linear (charrnn.py)
A new format is a module here and a branch in checkpoint.load_checkpoint.
"""

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do
