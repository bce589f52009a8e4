"""The image-to-video pipelines' image processors without torchvision.

diffusers' Wan 2.1 I2V and HunyuanVideo 1.5 I2V pipeline modules import transformers' `CLIPImageProcessor` and
`SiglipImageProcessor`. Since transformers 5, those names are the torchvision backend; without torchvision,
transformers hands out the PIL backend instead (`…ImageProcessorPil`, the same resize and normalisation) and says
so once per process on stderr. longgen runs the PIL backend on purpose (no torchvision dependency), so the note
is noise in front of every such run, and in front of a one-line refusal. `pil_fallback_quiet` drops that one
record, and only while longgen imports or builds those pipelines; every other transformers message passes.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

#: the logger transformers says it through (transformers/utils/import_utils.py, `_LazyModule.__getattr__`)
SOURCE = "transformers.utils.import_utils"
NOTE = re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`")


class _DropFallbackNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOTE.search(record.getMessage())


@contextlib.contextmanager
def pil_fallback_quiet() -> Iterator[None]:
    """Inside the block, transformers' note that an image processor fell back to its PIL backend is not shown
    (transformers then counts it as said: it does not come back later in the process)."""
    source, note = logging.getLogger(SOURCE), _DropFallbackNote()
    source.addFilter(note)
    try:
        yield
    finally:
        source.removeFilter(note)
