# The compiled module has the same names and signatures as its specification.
from ._python import apply_mask as apply_mask
from ._python import frame as frame
from ._python import parse_messages as parse_messages
