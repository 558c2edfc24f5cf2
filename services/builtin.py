"""The services that ship with vdag; importing a module registers its services."""
from services import probe  # noqa: F401
from services import counting, detection, faces, render  # noqa: F401
