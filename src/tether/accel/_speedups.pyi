# The compiled module has the same names and signatures as its specification.
from ._python import apply_mask as apply_mask
from ._python import frame as frame
from ._python import fuse as fuse
from ._python import parse_messages as parse_messages
from ._python import parse_upgrade_head as parse_upgrade_head
from ._python import mask_inplace as mask_inplace
from ._python import new_payload as new_payload
from ._python import pack_fields as pack_fields
from ._python import take_payload as take_payload
