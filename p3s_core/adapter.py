"""P3S adapter (the paper's "trainable copy with simplified layers") and its safetensors files.

Adapter mode, as docs/design.md describes it (the paper gives no architecture; these choices are
ours and kept small and easy to change):
- per transformer block of the REFERENCE pass, a low-rank residual on the self-attention input:
  ``n + up(down(n)) * alpha / rank`` with ``up`` zero-initialised (fresh adapter == identity);
- a subject-token context for the reference pass's cross-attention: a one-layer resampler over
  masked CLIP-vision patch tokens, blended with the text context by a learnable gate that starts
  at 0 (fresh adapter returns the text context exactly);
- optionally (``read_rank`` > 0), per transformer block of the DENOISING pass, a low-rank residual on the
  queries that read the subject tokens (``read_query``): the image learns where to look in the
  reference. Only the subject part of the read uses it (the image's own keys keep the plain query), so
  weight 0 stays plain sampling exactly. The deltas on the reference side alone can shape the subject
  tokens' keys and values but not which image tokens look at them; measured on the world benchmark
  (docs/worldbench.md), they did not lower the denoising loss below plain sampling at any noise level;
- optionally (``read_gain``), per transformer block a learned log-gain added to the subject tokens'
  attention bias (``read_log_gain``): the strength that P3S Apply's weight sets by hand, learned per layer
  and multiplied with the weight (zero-initialised: a fresh gain is weight x 1). On the world benchmark an
  adapter sampled at weight 3 (the node's maximum) transferred more than at 1 or 2, so training was
  leaving strength unused.

The architecture record, the file metadata and the compatibility check are ``p3s_core.adapter_spec``, the
torch modules ``p3s_core.adapter_net``, the files ``p3s_core.adapter_file``; this module is their public face
(everything the nodes, the trainer and users import is re-exported here).
"""

from __future__ import annotations

from .adapter_file import (FLOAT_DTYPES, MAX_HEADER_BYTES, adapter_state_dict, expected_tensor_shapes, load_adapter,
                           load_adapter_state_dict, read_adapter_header, save_adapter)
from .adapter_net import LowRankDelta, P3SAdapter, SubjectResampler
from .adapter_spec import (CLIP_WIDTH_NAMES, FAMILIES, FORMAT_NAME, FORMAT_VERSION, RESERVED_METADATA, AdapterSpec,
                           check_compatible, family_name, width_name)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FAMILIES", "CLIP_WIDTH_NAMES", "RESERVED_METADATA", "AdapterSpec",
           "LowRankDelta", "SubjectResampler", "P3SAdapter", "save_adapter", "read_adapter_header", "load_adapter",
           "check_compatible", "adapter_state_dict", "load_adapter_state_dict", "expected_tensor_shapes",
           "MAX_HEADER_BYTES", "FLOAT_DTYPES", "family_name", "width_name"]
